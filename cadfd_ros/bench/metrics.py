"""Depth and image metrics (METHOD.md, Evaluation conventions)."""
from __future__ import annotations

import numpy as np


def evaluation_mask(shape: tuple[int, int], border: int) -> np.ndarray:
    """Excludes the border band whose capture sees content from outside the frame."""
    mask = np.zeros(shape, bool)
    mask[border : shape[0] - border, border : shape[1] - border] = True
    return mask


def textured_mask(sharp: np.ndarray, threshold: float = 0.02, window: int = 7) -> np.ndarray:
    """Pixels with local structure in the true sharp image (defocus is observable there)."""
    import cv2

    image = sharp if sharp.ndim == 2 else sharp.mean(axis=2)
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3) / 8
    energy = cv2.blur(np.sqrt(gx * gx + gy * gy), (window, window))
    return energy > threshold


def depth_metrics(depth: np.ndarray, truth: np.ndarray, mask: np.ndarray, inverse_step: float | None = None
                  ) -> dict[str, float]:
    """AbsRel, RMSE (m), delta<1.25, and the error in layers (inverse-depth steps) if given."""
    valid = mask & np.isfinite(depth) & np.isfinite(truth) & (truth > 0)
    if not valid.any():
        return {"abs_rel": float("nan"), "rmse": float("nan"), "delta1": float("nan"), "valid": 0.0}
    d, t = depth[valid].astype(np.float64), truth[valid].astype(np.float64)
    out = {
        "abs_rel": float(np.mean(np.abs(d - t) / t)),
        "rmse": float(np.sqrt(np.mean((d - t) ** 2))),
        "delta1": float(np.mean(within_delta1(d, t))),
        "valid": float(valid.sum() / max(mask.sum(), 1)),
    }
    if inverse_step:
        out["layer_error"] = float(np.mean(np.abs(1 / d - 1 / t)) / inverse_step)
    return out


def within_delta1(depth: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Where a depth is right by the delta<1.25 metric: within a factor 1.25 of the truth (False where NaN)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum(depth / truth, truth / depth) < 1.25


def mirror_across_focus(depth: np.ndarray, focus_m: float) -> np.ndarray:
    """The depth whose thin-lens blur has the same size and the opposite sign, 1/d' = 2/focus - 1/d (a PSF's
    180-degree rotation); inf where there is none (no real depth that far past focus)."""
    inverse = 2.0 / focus_m - 1.0 / depth.astype(np.float64)
    with np.errstate(divide="ignore"):
        return np.where(inverse > 0, 1.0 / inverse, np.inf)


def either_side_delta1(depth: np.ndarray, truth: np.ndarray, mask: np.ndarray, focus_m: float) -> float:
    """delta<1.25 with a depth counted right when it or its mirror across focus is: the share that would be
    right if the side of focus were known. Against ``delta1`` it attributes a loss to the side of focus."""
    valid = mask & np.isfinite(depth) & np.isfinite(truth) & (truth > 0)
    if not valid.any():
        return float("nan")
    d, t = depth[valid].astype(np.float64), truth[valid].astype(np.float64)
    mirror = mirror_across_focus(d, focus_m)
    right = within_delta1(d, t) | within_delta1(mirror, t)
    return float(np.mean(right))


def wrong_depth_shares(depth: np.ndarray, truth: np.ndarray, mask: np.ndarray, inverse_depths: np.ndarray,
                       blur_diameters_px: np.ndarray, focus_m: float | None = None) -> dict[str, float]:
    """Where the wrong depths (outside delta<1.25) go, as shares of the masked pixels (with ``delta1`` they sum to
    1): ``wrong_sharper`` reads a smaller blur than the truth's, ``wrong_blurrier`` a larger one, and, for a bank
    that straddles focus (``focus_m`` given), ``wrong_side`` the other side of focus whatever its size. A blur's
    size is the bank's per-layer diameter (``PSFBank.effective_diameters_px``) interpolated in inverse depth, so
    a calibrated bank without a lens model has it too. It tells the losses apart that one delta mixes: the
    small-blur ambiguity, an evidence that over-blurs, and the side of focus."""
    valid = mask & np.isfinite(depth) & np.isfinite(truth) & (truth > 0) & (depth > 0)
    keys = ("wrong_sharper", "wrong_blurrier") + (("wrong_side",) if focus_m is not None else ())
    if not valid.any():
        return {key: float("nan") for key in keys}
    d, t = depth[valid].astype(np.float64), truth[valid].astype(np.float64)
    order = np.argsort(inverse_depths)
    inverse, diameters = np.asarray(inverse_depths, np.float64)[order], np.asarray(blur_diameters_px)[order]
    wrong = ~within_delta1(d, t)
    other_side = np.zeros_like(wrong)
    if focus_m is not None:  # behind focus 1/d < 1/focus
        other_side = wrong & (np.sign(1.0 / focus_m - 1.0 / d) != np.sign(1.0 / focus_m - 1.0 / t))
    sharper = wrong & ~other_side & (np.interp(1.0 / d, inverse, diameters) < np.interp(1.0 / t, inverse, diameters))
    out = {"wrong_sharper": float(np.mean(sharper)), "wrong_blurrier": float(np.mean(wrong & ~other_side & ~sharper))}
    if focus_m is not None:
        out["wrong_side"] = float(np.mean(other_side))
    return out


def image_metrics(image: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM of a linear image in [0, 1] over the masked region's bounding box."""
    from skimage.metrics import structural_similarity

    rows, cols = np.where(mask)
    crop = slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)
    a = np.clip(image[crop], 0, 1).astype(np.float64)
    b = truth[crop].astype(np.float64)
    mse = float(np.mean((a - b) ** 2))
    psnr = 10 * np.log10(1.0 / max(mse, 1e-12))
    ssim = structural_similarity(a, b, data_range=1.0, channel_axis=2 if a.ndim == 3 else None)
    return {"psnr": float(psnr), "ssim": float(ssim)}
