"""Reading captures and photos, writing result images.

Captures are read as linear intensity: 8-bit values / 255, 16-bit values / 65535.
Photos used for simulation are sRGB-encoded and are linearised with the sRGB EOTF.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from cadfd_ros.errors import InputImageError

CAPTURE_SUFFIXES = (".png", ".tif", ".tiff")


def read_capture(path: str | Path) -> np.ndarray:
    """8/16-bit PNG or TIFF, mono or RGB -> float32 linear [0, 1], H x W or H x W x 3."""
    path = Path(path)
    if path.is_dir():
        raise InputImageError(f"{path}: a folder, not a capture file")
    if not path.is_file():
        raise InputImageError(f"{path}: capture file not found")
    suffix = path.suffix.lower()
    if suffix not in CAPTURE_SUFFIXES:
        raise InputImageError(f"{path}: unsupported format {suffix or '(none)'}; use PNG or TIFF")
    return read_image_values(path, str(path))


def read_image_values(path: str | Path, name: str, grey: bool = False) -> np.ndarray:
    """An 8/16-bit image file (PNG, TIFF, JPEG, ...), mono or RGB, as float32 values in [0, 1] scaled by its full
    range (alpha dropped), without any transfer function; ``grey``: a colour file as its Rec. 601 luma (PIL's "L",
    which masks and targets were read with). Errors are one line starting with ``name``."""
    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"{name}: file not found")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            raw = tifffile.imread(path)
        else:
            import cv2

            raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if raw is None:
                raise InputImageError(f"{name}: not a readable image")
            if raw.ndim == 3:  # OpenCV decodes to BGR(A)
                raw = raw[:, :, 2::-1] if raw.shape[2] >= 3 else raw
    except InputImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoder errors vary by library (OpenCV's span several lines)
        raise InputImageError(f"{name}: cannot decode ({' '.join(str(exc).split())})") from None
    values = capture_to_float(raw, name)
    if grey and values.ndim == 3:
        values = values @ np.array([0.299, 0.587, 0.114], np.float32)
    return values


def capture_to_float(raw: np.ndarray, name: str) -> np.ndarray:
    """Integer image -> float32 linear [0, 1]; drops alpha; rejects other layouts."""
    raw = np.asarray(raw)
    if raw.ndim == 3 and raw.shape[2] == 4:
        raw = raw[:, :, :3]
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[:, :, 0]
    if raw.ndim not in (2, 3) or (raw.ndim == 3 and raw.shape[2] != 3):
        raise InputImageError(f"{name}: expected a mono or RGB image, got shape {raw.shape}")
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255.0
    if raw.dtype == np.uint16:
        return raw.astype(np.float32) / 65535.0
    if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):
        raise InputImageError(f"{name}: contains NaN or Inf")
    raise InputImageError(f"{name}: unsupported bit depth ({raw.dtype}); use 8- or 16-bit")


def srgb_to_linear(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.float32)
    return np.where(image <= 0.04045, image / 12.92, ((image + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(image: np.ndarray) -> np.ndarray:
    image = np.clip(np.asarray(image, np.float32), 0, 1)
    return np.where(image <= 0.0031308, image * 12.92, 1.055 * image ** (1 / 2.4) - 0.055).astype(np.float32)


INPUT_TRANSFERS = ("linear", "srgb")


def apply_input_transfer(image: np.ndarray, transfer: str) -> np.ndarray:
    """Capture values -> linear intensity: ``linear`` keeps them (raw sensors), ``srgb`` inverts the
    sRGB transfer curve (gamma-encoded 8-bit frames from most UVC/GigE drivers)."""
    if transfer == "linear":
        return image
    if transfer == "srgb":
        return srgb_to_linear(np.clip(image, 0.0, 1.0))
    raise ValueError(f"input_transfer must be one of {', '.join(INPUT_TRANSFERS)}, got {transfer!r}")


def read_npy(path: str | Path, name: str) -> np.ndarray:
    """A ``.npy`` array from a user's path, never unpickled; a real-number dtype. Errors are one line starting with
    ``name``: an empty or truncated file, a bad header, an object array (it would need pickle)."""
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy's errors vary with what is wrong
        raise InputImageError(f"{name}: cannot read ({exc})") from None
    if array.dtype.kind not in "fiu":
        raise InputImageError(f"{name}: must hold real numbers, got dtype {array.dtype}")
    return array


def read_flat_field(path: str | Path) -> np.ndarray:
    """A flat-field (vignetting) image -> float32 H x W or H x W x 3, normalised to max 1.

    8/16-bit PNG or TIFF (linear values, as captures), float TIFF, or .npy (read without pickle).
    Errors are one line naming the file."""
    path = Path(path)
    name = f"flat_field {path}"
    if not path.is_file():
        raise InputImageError(f"{name}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        raw = read_npy(path, name)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        try:
            raw = tifffile.imread(path)
        except Exception as exc:  # noqa: BLE001
            raise InputImageError(f"{name}: cannot decode ({exc})") from None
    elif suffix == ".png":
        raw = None
    else:
        raise InputImageError(f"{name}: unsupported format {suffix or '(none)'}; use PNG, TIFF or .npy")
    if raw is None:
        flat = read_capture(path)
    elif raw.dtype.kind == "f":
        flat = np.asarray(raw, np.float32)
        if flat.ndim == 3 and flat.shape[2] == 1:
            flat = flat[:, :, 0]
        if flat.ndim not in (2, 3) or (flat.ndim == 3 and flat.shape[2] != 3):
            raise InputImageError(f"{name}: expected a mono or RGB image, got shape {flat.shape}")
    else:
        flat = capture_to_float(raw, name)
    if not np.all(np.isfinite(flat)):
        raise InputImageError(f"{name}: contains NaN or Inf")
    if flat.min() <= 0:
        raise InputImageError(f"{name}: has zero or negative pixels; a flat field must be positive everywhere")
    return (flat / flat.max()).astype(np.float32)


def read_photo_linear(path: str | Path) -> np.ndarray:
    """An 8/16-bit sRGB photo (PNG, JPEG, TIFF, ...) -> linear float32 RGB or mono. A 16-bit file is scaled by
    65535, not clipped at 255."""
    return srgb_to_linear(read_image_values(path, f"photo {path}"))


def write_png(path: str | Path, image: np.ndarray, bits: int = 16) -> Path:
    """Linear [0, 1] image -> PNG with linear values (8 or 16 bit)."""
    import cv2

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputImageError(f"{path}: an image output must be a .png file")
    scale, dtype = (65535.0, np.uint16) if bits == 16 else (255.0, np.uint8)
    data = np.round(np.clip(image, 0, 1) * scale).astype(dtype)
    if data.ndim == 3:
        data = data[:, :, ::-1]
    if not cv2.imwrite(str(path), data):  # OpenCV says no more than that
        raise OSError(0, "could not write the PNG (is the folder writable?)", str(path))
    return path


def write_preview_png(path: str | Path, image: np.ndarray) -> Path:
    """Linear image -> 8-bit sRGB PNG for people to look at."""
    return write_png(path, linear_to_srgb(image), bits=8)
