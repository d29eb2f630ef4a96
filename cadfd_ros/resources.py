"""Locate bundled resources (config/, package data) in a checkout, a venv or a colcon install."""
from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DATA_DIR = PACKAGE_DIR / "data"


def config_dir() -> Path:
    """The package's config/ folder: source checkout first, then share/cadfd_ros/config."""
    candidates = [PACKAGE_DIR.parent / "config", Path(sys.prefix) / "share" / "cadfd_ros" / "config"]
    try:  # colcon / ament install
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("cadfd_ros")) / "config")
    except Exception:  # noqa: BLE001 - ament_index is optional outside ROS
        pass
    for path in candidates:
        if (path / "default_psf_bank.npz").is_file():
            return path
    raise FileNotFoundError(
        "cadfd_ros config/ folder not found (looked in: " + ", ".join(str(p) for p in candidates) + ")"
    )
