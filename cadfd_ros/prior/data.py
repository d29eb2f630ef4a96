"""Training/evaluation images for the diffusion prior: the data manifest, loading photos in
linear light, and an in-memory pool of linearised images that random crops are cut from.

The prior works in *linear* intensity (the solver's forward model is linear in light), while
photo files are sRGB-encoded, so every file is linearised with the sRGB EOTF on load.

Split (recorded in ``cadfd_ros/prior/MANIFEST.csv``): Debian wallpaper photos are the training
set; the scikit-image (and, if installed, scikit-learn) sample images are held out and are never
used for training, because the sampler benchmark builds its test scenes from them.
"""
from __future__ import annotations

import csv
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from cadfd_ros.errors import PriorError

MANIFEST_PATH = Path(__file__).resolve().parent / "MANIFEST.csv"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".ppm", ".pgm")
MANIFEST_FIELDS = ("name", "split", "source", "member", "licence", "copyright", "kind", "sha256_16", "note")

# Rec. 709 / sRGB luminance weights, applied in linear light to desaturate.
LUMA_WEIGHTS = (0.2126, 0.7152, 0.0722)

# scikit-image sample images that ship inside the wheel (others download at run time and fail
# offline). Held out: never used for training.
SKIMAGE_HELDOUT = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "clock", "grass", "gravel", "brick")
SKLEARN_HELDOUT = ("china.jpg", "flower.jpg")


def srgb_to_linear(v: np.ndarray) -> np.ndarray:
    """sRGB EOTF (IEC 61966-2-1) on values in [0, 1]."""
    v = np.asarray(v, dtype=np.float32)
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(v: np.ndarray) -> np.ndarray:
    """Inverse sRGB EOTF on values in [0, 1] (clipped), for display and PNG export."""
    v = np.clip(np.asarray(v, dtype=np.float32), 0.0, 1.0)
    return np.where(v <= 0.0031308, 12.92 * v, 1.055 * np.power(v, 1.0 / 2.4) - 0.055).astype(np.float32)


def load_image(path: str | os.PathLike, *, linearize: bool = True, max_side: int | None = None) -> np.ndarray:
    """Read an image file as float32 (H, W, 3) or (H, W) in [0, 1], linear light if ``linearize``.

    8- and 16-bit files are scaled by their full range; alpha is dropped. ``max_side`` lets JPEG
    decoding run at reduced resolution (DCT scaling) when the caller will downscale anyway.
    """
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            if max_side is not None and im.format == "JPEG":
                scale = max(im.size) / max_side
                if scale >= 2:
                    im.draft("RGB", (int(im.size[0] / scale) + 1, int(im.size[1] / scale) + 1))
            if im.mode.startswith("I"):
                arr = np.asarray(im, dtype=np.float32) / 65535.0
            elif im.mode in ("L", "LA", "1"):
                arr = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as exc:
        raise PriorError(f"image {path}: cannot be read ({exc})") from exc
    if arr.ndim == 3 and np.allclose(arr[..., 0], arr[..., 1]) and np.allclose(arr[..., 0], arr[..., 2]):
        arr = arr[..., 0]  # stored as RGB but grey: keep it mono so eval treats it as mono
    return srgb_to_linear(arr) if linearize else arr


def list_images(dirs: Iterable[str | os.PathLike]) -> list[Path]:
    """All image files (recursively, following symlinks) under each folder, sorted for determinism."""
    out: list[Path] = []
    for d in dirs:
        d = Path(d)
        if d.is_file() and d.suffix.lower() in IMAGE_SUFFIXES:
            out.append(d)
            continue
        if not d.is_dir():
            raise PriorError(f"image folder {d}: does not exist or is not a folder")
        found = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise PriorError(f"image folder {d}: contains no images ({', '.join(IMAGE_SUFFIXES)})")
        out.extend(found)
    return out


def center_crop_resize(img: np.ndarray, size: int) -> np.ndarray:
    """Downscale (area-averaged, in linear light) so the short side is ``size``, then center-crop
    to size x size. Images already smaller than ``size`` are only center-cropped to a square."""
    import torch
    import torch.nn.functional as F

    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    if s > size:
        t = torch.from_numpy(np.ascontiguousarray(img))
        t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
        t = F.interpolate(t, size=(size, size), mode="area")
        img = t[0, 0].numpy() if img.ndim == 2 else t[0].permute(1, 2, 0).numpy()
    return np.ascontiguousarray(img, dtype=np.float32)


# --------------------------------------------------------------------------- training pool


@dataclass
class PoolConfig:
    """How photos become training crops: each photo is kept at several downscaled sizes (short
    side in ``short_sides``) so crops see both fine texture and object-scale structure."""

    short_sides: tuple[int, ...] = (256, 512, 1024)


class CropPool:
    """Linearised photos held in memory (float16) at a few scales; random crops are cut on demand.

    Building is deterministic (sorted files, no randomness), so a seeded generator drawing from the
    pool gives the same batches in every run and after a resume.
    """

    def __init__(self, paths: Sequence[Path], config: PoolConfig | None = None, progress: bool = False):
        import torch
        import torch.nn.functional as F

        self.config = config or PoolConfig()
        self.images: list["torch.Tensor"] = []  # (3, H, W) float16 linear
        self.sources: list[str] = []
        if not paths:
            raise PriorError("training data: no images given")
        iterator: Iterable[Path] = paths
        if progress:
            from tqdm import tqdm

            iterator = tqdm(paths, desc="loading photos", unit="img")
        biggest = max(self.config.short_sides)
        for p in iterator:
            arr = load_image(p, max_side=4 * biggest)
            if arr.ndim == 2:
                arr = np.repeat(arr[..., None], 3, axis=2)
            base = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None]
            h, w = base.shape[-2:]
            for side in self.config.short_sides:
                if min(h, w) < side:
                    continue
                scale = side / min(h, w)
                size = (max(side, round(h * scale)), max(side, round(w * scale)))
                # area averaging in linear light = what a lower-resolution sensor would record
                img = F.interpolate(base, size=size, mode="area") if size != (h, w) else base
                self.images.append(img[0].to(torch.float16).contiguous())
                self.sources.append(f"{p.name}@{side}")
        if not self.images:
            raise PriorError(f"training data: no image has a short side >= {min(self.config.short_sides)} px")

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, generator: "torch.Generator", batch: int, crop: int) -> "torch.Tensor":
        """(batch, 3, crop, crop) float32 linear crops: uniform image/scale, uniform position,
        horizontal flip with p=0.5. All randomness comes from ``generator``."""
        import torch

        idx = torch.randint(len(self.images), (batch,), generator=generator).tolist()
        u = torch.rand(batch, 3, generator=generator).tolist()
        out = torch.empty(batch, 3, crop, crop)
        for b, (i, (uy, ux, uf)) in enumerate(zip(idx, u)):
            img = self.images[i]
            h, w = img.shape[-2:]
            if h < crop or w < crop:
                raise PriorError(f"training data: {self.sources[i]} is smaller than the crop size {crop}")
            y = int(uy * (h - crop + 1))
            x = int(ux * (w - crop + 1))
            c = img[:, y : y + crop, x : x + crop].float()
            out[b] = c.flip(-1) if uf < 0.5 else c
        return out


def desaturate(x: "torch.Tensor") -> "torch.Tensor":
    """Linear-light luminance of (B, 3, H, W), replicated to 3 channels."""
    import torch

    w = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True).expand_as(x).contiguous()


# --------------------------------------------------------------------------- manifest / export


def read_manifest(path: str | os.PathLike = MANIFEST_PATH) -> list[dict[str, str]]:
    """Rows of the data manifest; raises PriorError naming the file if it is malformed."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise PriorError(f"manifest {path}: cannot be read ({exc})") from exc
    if not rows or set(MANIFEST_FIELDS) - set(rows[0]):
        raise PriorError(f"manifest {path}: expected columns {', '.join(MANIFEST_FIELDS)}")
    bad = [r["name"] for r in rows if r["split"] not in ("train", "heldout", "excluded")]
    if bad:
        raise PriorError(f"manifest {path}: unknown split for {', '.join(bad)}")
    return rows


def _sha256_16(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def export_prior_data(root: str | os.PathLike, manifest: str | os.PathLike = MANIFEST_PATH) -> dict[str, int]:
    """Lay out ``root/train`` (links to the unpacked Debian photos listed as ``train``, checked by
    hash) and ``root/heldout`` (scikit-image / scikit-learn samples written as 8-bit sRGB PNG).

    Expects the packages already unpacked under ``root/x/<package>/`` (``make prior-data`` does it).
    Returns counts per split.
    """
    from PIL import Image

    root = Path(root)
    rows = read_manifest(manifest)
    train_dir, held_dir = root / "train", root / "heldout"
    for d in (train_dir, held_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    counts = {"train": 0, "heldout": 0, "skipped": 0}
    for r in rows:
        if r["split"] == "train":
            src = root / "x" / r["source"].split("=")[0] / r["member"]
            if not src.is_file():
                raise PriorError(f"prior data: {r['name']}: {src} missing (run `make prior-data`)")
            if r["sha256_16"] and _sha256_16(src) != r["sha256_16"]:
                raise PriorError(f"prior data: {r['name']}: {src} does not match the manifest hash")
            (train_dir / (r["name"] + src.suffix.lower())).symlink_to(src.resolve())
            counts["train"] += 1
        elif r["split"] == "heldout":
            arr = _heldout_array(r["source"], r["member"])
            if arr is None:
                counts["skipped"] += 1
                continue
            Image.fromarray(arr).save(held_dir / f"{r['name']}.png")
            counts["heldout"] += 1
    return counts


def _heldout_array(source: str, member: str) -> np.ndarray | None:
    """uint8 image for a held-out manifest row, or None if its library is not installed."""
    if source.startswith("scikit-image"):
        import skimage.data

        return np.asarray(getattr(skimage.data, member)())
    if source.startswith("scikit-learn"):
        try:
            from sklearn.datasets import load_sample_image
        except ImportError:
            return None
        return np.asarray(load_sample_image(member))
    raise PriorError(f"manifest: unknown held-out source {source!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cadfd_ros.prior.data ROOT``: export train/heldout folders (used by the Makefile)."""
    import argparse

    ap = argparse.ArgumentParser(description=export_prior_data.__doc__)
    ap.add_argument("root", help="prior data folder, e.g. .prior-data")
    ap.add_argument("--manifest", default=str(MANIFEST_PATH))
    args = ap.parse_args(argv)
    counts = export_prior_data(args.root, args.manifest)
    print(f"prior data in {args.root}: {counts['train']} training photos, {counts['heldout']} held-out images"
          + (f" ({counts['skipped']} skipped: scikit-learn not installed)" if counts["skipped"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
