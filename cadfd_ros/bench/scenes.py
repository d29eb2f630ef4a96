"""Synthetic coded captures from photos with procedural depth (slanted planes plus occluders) or, for a photo that
has one, its measured depth.

Photos come from the sample data bundled in installed wheels: scikit-image's (CC0 / public domain per its
docstrings; the Middlebury 2014 stereo pair's left view), scikit-learn's and matplotlib's. They are never part of
the prior's training set, which uses Debian wallpaper photos only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cadfd_ros.forward.render import render_occlusion_aware
from cadfd_ros.io.images import srgb_to_linear
from cadfd_ros.optics.psf_bank import PSFBank

# Photos the classical solver's parameters were tuned on, and photos used only for testing.
TUNING_PHOTOS = ("astronaut", "coffee")
TEST_PHOTOS = ("chelsea", "rocket", "camera", "coins", "brick", "gravel")


@dataclass
class Scene:
    name: str
    sharp: np.ndarray  # linear, H x W [x 3]
    depth: np.ndarray  # metres, H x W
    capture: np.ndarray  # linear, noisy
    noise_sigma: float


def load_photo(name: str) -> np.ndarray:
    """A bundled sample photo as linear float32 (RGB or mono): a scikit-image name (of a stereo pair, such as
    ``stereo_motorcycle``, the left view), ``sklearn:NAME`` for scikit-learn's sample images (china, flower;
    CC-BY-2.0) or ``matplotlib:NAME`` for matplotlib's sample data (``grace_hopper``)."""
    if name.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        image = load_sample_image(name.split(":", 1)[1] + ".jpg")
    elif name.startswith("matplotlib:"):
        from pathlib import Path

        from matplotlib import get_data_path
        from PIL import Image

        stem = name.split(":", 1)[1]
        folder = Path(get_data_path()) / "sample_data"
        found = [folder / (stem + suffix) for suffix in (".jpg", ".png") if (folder / (stem + suffix)).is_file()]
        if not found or Path(stem).name != stem:  # a name, never a path out of the sample folder
            raise ValueError(f"photo {name!r}: not in matplotlib's sample data (no {stem}.jpg or {stem}.png)")
        image = np.asarray(Image.open(found[0]))
    else:
        import skimage.data

        try:
            image = getattr(skimage.data, name)()
        except AttributeError:
            raise ValueError(f"photo {name!r}: not a scikit-image sample (skimage.data) name") from None
        if isinstance(image, tuple):  # a stereo pair (left, right, disparity): the left view
            image = image[0]
    image = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else float(np.iinfo(image.dtype).max))
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    return srgb_to_linear(image)


def fit_photo(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to cover height x width (area interpolation when shrinking, cubic when enlarging), then centre-crop."""
    return _cover_crop(image, height, width).clip(0, 1)


def _cover_crop(image: np.ndarray, height: int, width: int, interpolation: int | None = None) -> np.ndarray:
    """``image`` resized to cover height x width and centre-cropped: the same framing for a photo and its depth.
    ``interpolation``: an OpenCV flag; None, area when shrinking and cubic when enlarging."""
    import cv2

    scale = max(height / image.shape[0], width / image.shape[1])
    if interpolation is None:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    size = (max(width, int(round(image.shape[1] * scale))), max(height, int(round(image.shape[0] * scale))))
    resized = cv2.resize(image, size, interpolation=interpolation)
    top = (resized.shape[0] - height) // 2
    left = (resized.shape[1] - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width]).astype(np.float32)


# Photos with a measured depth: the Middlebury 2014 stereo pair's ground-truth disparity (left view, NaN where
# unknown) and its offset doffs (px), so that inverse depth is proportional to disparity + doffs.
MEASURED_DISPARITY = {"stereo_motorcycle": 31.086}


def measured_depth(photo: str, height: int, width: int, near: float, far: float) -> np.ndarray:
    """The photo's measured scene geometry framed as ``fit_photo`` frames the photo, its inverse depth mapped
    affinely onto [1/far, 1/near] (1st to 99th percentile; an affine map of inverse depth keeps planes planar, so
    it is the same scene at another scale). Pixels without ground truth take their nearest measured neighbour's."""
    import cv2
    from scipy import ndimage

    if photo not in MEASURED_DISPARITY:
        raise ValueError(f"photo {photo!r}: no measured depth (photos with one: {', '.join(MEASURED_DISPARITY)})")
    import skimage.data

    disparity = getattr(skimage.data, photo)()[2].astype(np.float64) + MEASURED_DISPARITY[photo]
    unknown = ~np.isfinite(disparity)
    nearest = ndimage.distance_transform_edt(unknown, return_distances=False, return_indices=True)
    disparity = disparity[tuple(nearest)]
    inverse = _cover_crop(disparity.astype(np.float32), height, width, cv2.INTER_NEAREST).astype(np.float64)
    low, high = np.percentile(inverse, [1, 99])
    unit = np.clip((inverse - low) / max(high - low, 1e-9), 0, 1)
    return (1.0 / (1.0 / far + unit * (1.0 / near - 1.0 / far))).astype(np.float32)


def procedural_depth(height: int, width: int, near: float, far: float, rng: np.random.Generator,
                     occluders: int = 3) -> np.ndarray:
    """A slanted background plane in inverse depth plus nearer slanted occluding shapes."""
    inv_near, inv_far = 1.0 / near, 1.0 / far
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = xx / max(width - 1, 1), yy / max(height - 1, 1)

    def plane(lo: float, hi: float) -> np.ndarray:
        a, b = rng.uniform(-1, 1, size=2)
        ramp = a * (u - 0.5) + b * (v - 0.5)
        ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-9)
        start, end = sorted(rng.uniform(lo, hi, size=2))
        return start + (end - start) * ramp

    span = inv_near - inv_far
    inverse = plane(inv_far, inv_far + 0.55 * span)  # background: the far part of the range
    for _ in range(occluders):
        cy, cx = rng.uniform(0.15, 0.85, size=2)
        ry, rx = rng.uniform(0.12, 0.3, size=2)
        if rng.random() < 0.5:
            mask = ((v - cy) / ry) ** 2 + ((u - cx) / rx) ** 2 <= 1
        else:
            mask = (np.abs(v - cy) <= ry) & (np.abs(u - cx) <= rx)
        layer = plane(inv_far + 0.35 * span, inv_near)
        inverse = np.where(mask & (layer > inverse), layer, inverse)
    return (1.0 / inverse).astype(np.float32)


def motion_blur(image: np.ndarray, length_px: int) -> np.ndarray:
    """The camera moving sideways during the exposure: a horizontal box of ``length_px`` pixels (1 or less: none),
    borders reflected, each channel alike."""
    import cv2

    if length_px < 0:
        raise ValueError(f"motion blur length must be >= 0 px, got {length_px}")
    if length_px <= 1:
        return image
    kernel = np.full((1, int(length_px)), 1.0 / int(length_px), np.float32)
    return cv2.filter2D(np.ascontiguousarray(image, np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT)


def make_scene(
    photo: str | np.ndarray,
    bank: PSFBank,
    height: int,
    width: int,
    noise_sigma: float = 0.01,
    seed: int = 0,
    channels: int | None = None,
    name: str | None = None,
    motion_px: int = 0,
    measured: bool = False,
) -> Scene:
    """Render a noisy coded capture of a photo over procedural depth within the bank's range (``measured``: over
    the photo's own measured geometry, ``measured_depth``); ``motion_px`` blurs the capture (not the scene) by a
    sideways camera motion during the exposure, before the noise."""
    rng = np.random.default_rng(seed)
    image = load_photo(photo) if isinstance(photo, str) else np.asarray(photo, np.float32)
    if channels == 1 and image.ndim == 3:
        image = image @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    elif channels == 3 and image.ndim == 2:  # a grey photo on an RGB sensor: each channel gets its own noise
        image = np.repeat(image[:, :, None], 3, axis=2)
    sharp = fit_photo(image, height, width)
    near, far = float(bank.depths[0]), float(bank.depths[-1])
    if measured:
        if not isinstance(photo, str):
            raise ValueError("a measured depth needs a photo name, not an image")
        depth = measured_depth(photo, height, width, near, far)
    else:
        depth = procedural_depth(height, width, near, far, rng)
    clean = motion_blur(render_occlusion_aware(sharp, depth, bank), motion_px)
    noisy = clean + rng.normal(0.0, noise_sigma, size=clean.shape).astype(np.float32)
    return Scene(name or (photo if isinstance(photo, str) else "image"), sharp, depth,
                 np.clip(noisy, 0, 1).astype(np.float32), noise_sigma)
