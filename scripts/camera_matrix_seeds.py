"""The camera matrix over several seeds: the README's three-seed tables from the ``camera_matrix.json`` of runs of
``cadfd bench --cameras ... --seed S --out-dir DIR`` (same cameras and photos, one run per seed): per camera, then
(``--by-photo``) per photo over every camera and run, and (``--wrong-depths``) where each method's wrong depths go.

usage: python scripts/camera_matrix_seeds.py [--by-photo] [--wrong-depths] DIR_SEED0 DIR_SEED1 DIR_SEED2 [...]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cadfd_ros.bench.camera_matrix import photo_means_table, seed_means_table, wrong_depth_table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="output folders of cadfd bench --cameras, one per seed")
    parser.add_argument("--by-photo", action="store_true",
                        help="also the table per photo (runs with per-scene figures)")
    parser.add_argument("--wrong-depths", action="store_true",
                        help="also the table of where the wrong depths go (too small a blur, too large, other side)")
    args = parser.parse_args()
    runs = []
    for folder in args.runs:
        path = folder / "camera_matrix.json"
        if not path.is_file():
            parser.error(f"{folder}: no camera_matrix.json (the output folder of cadfd bench --cameras)")
        runs.append(json.loads(path.read_text()))
    print(seed_means_table(runs))
    if args.by_photo:
        print()
        print(photo_means_table(runs))
    if args.wrong_depths:
        print()
        print(wrong_depth_table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
