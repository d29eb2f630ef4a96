"""Writing reconstruction results: the files of the ``cadfd reconstruct`` contract."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cadfd_ros.io.images import write_png
from cadfd_ros.pipeline import Reconstruction


def backproject(depth: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Pinhole back-projection (REP 103 optical frame): X=(u-cx)Z/fx, Y=(v-cy)Z/fy. H x W x 3."""
    height, width = depth.shape
    u = np.arange(width, dtype=np.float32)[None, :]
    v = np.arange(height, dtype=np.float32)[:, None]
    z = depth.astype(np.float32)
    return np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=-1)


def write_ply(path: str | Path, points: np.ndarray, colors: np.ndarray | None = None) -> Path:
    """Binary little-endian PLY of the valid (finite) points, with optional 8-bit colour."""
    path = Path(path)
    xyz = points.reshape(-1, 3)
    valid = np.all(np.isfinite(xyz), axis=1)
    xyz = xyz[valid].astype("<f4")
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(xyz)}",
              "property float x", "property float y", "property float z"]
    if colors is not None:
        rgb = colors.reshape(-1, colors.shape[-1] if colors.ndim == 3 else 1)[valid]
        rgb = np.repeat(rgb, 3, axis=1) if rgb.shape[1] == 1 else rgb
        rgb = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
        header += ["property uchar red", "property uchar green", "property uchar blue"]
        record = np.empty(len(xyz), dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)])
        record["xyz"], record["rgb"] = xyz, rgb
        payload = record.tobytes()
    else:
        payload = xyz.tobytes()
    with open(path, "wb") as handle:
        handle.write(("\n".join(header + ["end_header"]) + "\n").encode("ascii"))
        handle.write(payload)
    return path


def write_depth_png(path: str | Path, depth: np.ndarray, near: float, far: float, title: str = "depth") -> Path:
    """Colourised depth with a colour bar (metres); invalid pixels in grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = depth.shape
    fig, ax = plt.subplots(figsize=(max(3.0, width / 100 + 1.2), max(2.0, height / 100)), dpi=100)
    cmap = plt.get_cmap("turbo_r").with_extremes(bad="0.5")  # invalid depth in grey
    shown = ax.imshow(np.ma.masked_invalid(depth), cmap=cmap, vmin=near, vmax=far)
    ax.set_title(title)
    ax.axis("off")
    fig.colorbar(shown, ax=ax, label="depth [m]", fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def write_reconstruction(
    out_dir: str | Path,
    result: Reconstruction,
    intrinsics: tuple[float, float, float, float],
    depth_limits: tuple[float, float],
    report_extra: dict | None = None,
) -> dict:
    """Write depth.npy, aif.npy, aif.png, confidence.npy, depth.png, points.ply, report.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "depth.npy", result.depth.astype(np.float32))
    np.save(out / "aif.npy", result.all_in_focus.astype(np.float32))
    np.save(out / "confidence.npy", result.confidence.astype(np.float32))
    write_png(out / "aif.png", result.all_in_focus, bits=8 if result.all_in_focus.ndim == 3 else 16)
    write_depth_png(out / "depth.png", result.depth, *depth_limits)
    points = backproject(result.depth, *intrinsics)
    write_ply(out / "points.ply", points, result.all_in_focus)
    low, high = result.depth_range()
    report = {
        "method": result.method,
        "sampler": result.sampler,
        "steps": result.steps,
        "timings_s": {key: round(value, 4) for key, value in result.timings.items()},
        # time inside the prior's network calls, and total / network: what the sampler adds around them
        "network_s": round(result.network_seconds, 4),
        "overhead": (round(result.timings["total"] / result.network_seconds, 3)
                     if result.network_seconds > 0 and "total" in result.timings else None),
        "final_residual": result.residual,
        # what the sampler started from, and the warm start's data term (None: no previous frame checked)
        "start": result.start,
        "warm_data_term": result.warm_data_term if np.isfinite(result.warm_data_term) else None,
        "noise_sigma": result.noise_sigma,
        "noise_source": result.noise_source,
        "depth_range_m": [low, high],
        "valid_fraction": result.valid_fraction,
        "intrinsics": dict(zip(("fx", "fy", "cx", "cy"), intrinsics)),
    }
    report.update(report_extra or {})
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
