"""PSF bank: one calibrated point-spread function per depth layer.

File format (``.npz``, always read with ``allow_pickle=False``):

* ``psfs``: float32, (L, k, k) or (L, C, k, k); k odd, values >= 0, each PSF sums to 1
  per channel (sums within 1e-3 of 1 are renormalised silently).
* ``depths``: float32 (L,), metres, strictly increasing (layer 0 is the nearest).
* optional scalars: ``focal_length_m``, ``f_number``, ``focus_distance_m``, ``pixel_pitch_m``, and
  ``frame_width_px`` / ``frame_height_px``: the frame size a calibrated bank's PSFs were measured at (PSFs are
  in pixels: a frame binned or scaled to another size no longer fits them; a crop does).
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cadfd_ros.errors import PSFBankError

SUM_TOLERANCE = 1e-3
METADATA_KEYS = ("focal_length_m", "f_number", "focus_distance_m", "pixel_pitch_m",
                 "frame_width_px", "frame_height_px")


@dataclass(frozen=True)
class PSFBank:
    """Validated PSF bank. ``psfs`` is always (L, C, k, k) float32."""

    psfs: np.ndarray
    depths: np.ndarray
    metadata: dict[str, float] = field(default_factory=dict)
    source: str = "<array>"

    def __post_init__(self) -> None:
        psfs, depths = validate_psf_arrays(self.psfs, self.depths, self.source)
        object.__setattr__(self, "psfs", psfs)
        object.__setattr__(self, "depths", depths)
        meta = {}
        for key, value in self.metadata.items():
            if key not in METADATA_KEYS:
                raise PSFBankError(f"{self.source}: unknown metadata key {key!r} (allowed: {', '.join(METADATA_KEYS)})")
            value = float(value)
            if not np.isfinite(value) or value <= 0:
                raise PSFBankError(f"{self.source}: metadata {key} must be a positive finite number, got {value}")
            meta[key] = value
        object.__setattr__(self, "metadata", meta)

    def frame_size_note(self, width: int, height: int) -> str | None:
        """Why a ``width`` x ``height`` frame may not fit this bank (None when it does or the bank does not say):
        a calibrated bank records the frame size its PSFs were measured at."""
        calibrated = (self.metadata.get("frame_width_px"), self.metadata.get("frame_height_px"))
        if None in calibrated or (int(width), int(height)) == (int(calibrated[0]), int(calibrated[1])):
            return None
        return (f"{width}x{height} frames, but the PSF bank was calibrated on "
                f"{int(calibrated[0])}x{int(calibrated[1])} frames: if the camera binned or scaled them, the PSFs (in "
                "pixels) no longer fit (a crop is fine; bin with input_downscale, which scales the bank too)")

    @property
    def num_layers(self) -> int:
        return int(self.psfs.shape[0])

    @property
    def num_channels(self) -> int:
        return int(self.psfs.shape[1])

    @property
    def kernel_size(self) -> int:
        return int(self.psfs.shape[-1])

    @property
    def half_size(self) -> int:
        """Border band (pixels) whose capture sees content from outside the frame."""
        return self.kernel_size // 2

    def effective_diameters_px(self) -> np.ndarray:
        """Per layer, the diameter of the disc whose uniform PSF has the same energy sum(h^2) as this one (channels
        averaged): sqrt(4 / (pi sum(h^2))). A point is 1.13 px, a disc of diameter D about D; it needs no lens
        model, so calibrated banks have it too."""
        psfs = np.asarray(self.psfs, np.float64).reshape(self.num_layers, -1, self.kernel_size, self.kernel_size)
        psfs = psfs.mean(axis=1)
        psfs = psfs / psfs.sum(axis=(-2, -1), keepdims=True)
        return np.sqrt(4.0 / (np.pi * (psfs**2).sum(axis=(-2, -1))))

    @property
    def inverse_depths(self) -> np.ndarray:
        """1/depth per layer, decreasing with the layer index."""
        return (1.0 / self.depths).astype(np.float32)

    def focal_length_px(self) -> float | None:
        """Focal length in pixels from the bank's metadata, if it has the optics."""
        f, pitch = self.metadata.get("focal_length_m"), self.metadata.get("pixel_pitch_m")
        return None if f is None or pitch is None else f / pitch

    def straddles_focus(self) -> bool:
        """Whether the bank has layers on both sides of the focus plane (from ``focus_distance_m``; False
        without it). Only then does it hold PSFs that are each other's 180-degree rotations."""
        focus = self.metadata.get("focus_distance_m")
        return focus is not None and float(self.depths.min()) < focus < float(self.depths.max())

    def psfs_for_channels(self, channels: int) -> np.ndarray:
        """PSFs as (L, channels, k, k): a mono bank is shared, an RGB bank is averaged for mono."""
        if self.num_channels == channels:
            return self.psfs
        if self.num_channels == 1:
            return np.repeat(self.psfs, channels, axis=1)
        if channels == 1:
            return self.psfs.mean(axis=1, keepdims=True)
        raise PSFBankError(f"{self.source}: bank has {self.num_channels} channels, capture has {channels}")


def validate_psf_arrays(psfs: np.ndarray, depths: np.ndarray, source: str = "<array>") -> tuple[np.ndarray, np.ndarray]:
    """Check every format rule; return (L, C, k, k) float32 PSFs renormalised and float32 depths."""
    psfs = np.asarray(psfs)
    depths = np.asarray(depths)
    if psfs.dtype.kind not in "fiu":
        raise PSFBankError(f"{source}: 'psfs' must be numeric, got dtype {psfs.dtype}")
    if depths.dtype.kind not in "fiu":
        raise PSFBankError(f"{source}: 'depths' must be numeric, got dtype {depths.dtype}")
    if psfs.ndim == 3:
        psfs = psfs[:, None]
    if psfs.ndim != 4:
        raise PSFBankError(f"{source}: 'psfs' must have shape (L, k, k) or (L, C, k, k), got {tuple(psfs.shape)}")
    num_layers, channels, kh, kw = psfs.shape
    if num_layers < 2:
        raise PSFBankError(f"{source}: need at least 2 depth layers, got {num_layers}")
    if channels not in (1, 3):
        raise PSFBankError(f"{source}: 'psfs' must have 1 or 3 channels, got {channels}")
    if kh != kw or kh % 2 == 0:
        raise PSFBankError(f"{source}: PSFs must be square with an odd size k, got {kh}x{kw}")
    if depths.shape != (num_layers,):
        raise PSFBankError(f"{source}: 'depths' must have shape ({num_layers},) to match 'psfs', got {tuple(depths.shape)}")
    psfs = psfs.astype(np.float64)
    depths = depths.astype(np.float64)
    if not np.all(np.isfinite(psfs)):
        raise PSFBankError(f"{source}: 'psfs' contains NaN or Inf")
    if not np.all(np.isfinite(depths)):
        raise PSFBankError(f"{source}: 'depths' contains NaN or Inf")
    if np.any(psfs < 0):
        where = np.argwhere(psfs < 0)[0]
        raise PSFBankError(f"{source}: 'psfs' has negative values (first at layer {where[0]}, channel {where[1]})")
    if np.any(depths <= 0):
        raise PSFBankError(f"{source}: 'depths' must be positive metres, got min {depths.min():g}")
    if np.any(np.diff(depths) <= 0):
        raise PSFBankError(f"{source}: 'depths' must be strictly increasing (layer 0 nearest), got {depths.tolist()}")
    sums = psfs.sum(axis=(2, 3))
    worst = np.unravel_index(np.argmax(np.abs(sums - 1.0)), sums.shape)
    if abs(sums[worst] - 1.0) > SUM_TOLERANCE:
        raise PSFBankError(
            f"{source}: PSF of layer {worst[0]} channel {worst[1]} sums to {sums[worst]:.6f}, "
            f"not 1 (tolerance {SUM_TOLERANCE:g})"
        )
    psfs = psfs / sums[:, :, None, None]
    return psfs.astype(np.float32), depths.astype(np.float32)


def load_psf_bank(path: str | Path) -> PSFBank:
    """Load and validate a ``.npz`` PSF bank; every failure names the file and the rule broken."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise PSFBankError(f"{source}: PSF bank file not found")
    if not zipfile.is_zipfile(path):
        raise PSFBankError(f"{source}: not a readable .npz archive (not a zip file)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise PSFBankError(f"{source}: not a readable .npz archive ({exc})") from None
    except ValueError as exc:  # object arrays need pickle, which we refuse
        raise PSFBankError(f"{source}: contains arrays that need pickle, refused ({exc})") from None
    for key in ("psfs", "depths"):
        if key not in arrays:
            raise PSFBankError(f"{source}: missing key {key!r} (found: {', '.join(sorted(arrays)) or 'nothing'})")
    metadata = {}
    for key in METADATA_KEYS:
        if key in arrays:
            value = arrays[key]
            if value.size != 1:
                raise PSFBankError(f"{source}: metadata {key!r} must be a scalar, got shape {value.shape}")
            if value.dtype.kind not in "fiu":
                raise PSFBankError(f"{source}: metadata {key!r} must be a real number, got dtype {value.dtype}")
            metadata[key] = float(value.reshape(()))
    return PSFBank(arrays["psfs"], arrays["depths"], metadata, source=source)


def save_psf_bank(bank: PSFBank, path: str | Path) -> Path:
    """Write a bank in the documented ``.npz`` format."""
    path = Path(path)
    if path.suffix.lower() != ".npz":  # numpy would append .npz, and the name given would not load
        raise PSFBankError(f"{path}: a PSF bank file must end in .npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    extras = {key: np.float64(value) for key, value in bank.metadata.items()}
    psfs = bank.psfs[:, 0] if bank.num_channels == 1 else bank.psfs
    np.savez_compressed(path, psfs=psfs.astype(np.float32), depths=bank.depths.astype(np.float32), **extras)
    return path


def default_psf_bank_path() -> Path:
    """The bundled bank for the documented default camera (config/default_psf_bank.npz)."""
    from cadfd_ros.resources import config_dir

    return config_dir() / "default_psf_bank.npz"
