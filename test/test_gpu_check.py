"""scripts/gpu_check.sh: the prepared GPU measurement, dry-run on CPU so it works the first time a GPU is lent."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("diffusers")
ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON=sys.executable)
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_dry_run_runs_every_check_and_writes_the_report(tmp_path):
    proc = _run(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = (tmp_path / "out" / "gpu_check.md").read_text()
    for section in ("## Speed (DFD-DPS)", "## CPU against CPU", "## bf16 against fp32", "## Tiled path", "## Verdict"):
        assert section in report
    checks = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["checks"]
    assert checks == {"cuda_vs_cpu": True, "bf16_vs_fp32": True, "tiled_oom": True}
    rows = json.loads((tmp_path / "out" / "speed.json").read_text())
    assert [r["steps"] for r in rows] == [1, 2] and all(r["network_s"] > 0 for r in rows)
    # the measurement of what the sampler does not use yet comes last, after the verdict: the eager call is timed,
    # the compiled and graphed variants are rows the dry run skips
    variants = report.split("## Network variants not in the sampler yet")[1]
    assert report.index("## Verdict") < report.index("## Network variants")
    eager = next(line for line in variants.splitlines() if line.startswith("| eager"))
    assert float(eager.split("|")[2]) > 0
    for name in ("torch.compile |", "reduce-overhead (CUDA graphs)", "CUDA graph, captured by hand"):
        assert name in variants and "skipped in the dry run" in variants
    assert "Upload of a 640×480 RGB float frame: skipped (dry run)" in variants


def test_unknown_argument_is_refused(tmp_path):
    proc = _run(tmp_path, "--fast")
    assert proc.returncode == 2 and "unknown argument --fast" in proc.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_the_real_run_says_so(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


def test_compare_fails_when_two_reconstructions_differ():
    """The dry run's checks pass by construction (CPU against an identical CPU run), so the comparison itself
    is tested here: it passes for the same run twice and fails against a reconstruction that is far off."""
    from types import SimpleNamespace

    import numpy as np

    from cadfd_ros.bench import gpu_check
    from cadfd_ros.optics.psf_bank import default_psf_bank_path, load_psf_bank

    bank = load_psf_bank(default_psf_bank_path())
    scene = gpu_check._scene(bank, 64, 64, channels=1)

    class CaptureAsIs:  # the capture as the image, one depth everywhere: what a broken device path might give
        def reconstruct(self, capture):
            depth = np.full(capture.shape[:2], float(bank.depths[0]), np.float32)
            return SimpleNamespace(depth=depth, all_in_focus=capture, timings={"total": 0.0})

    ok, table = gpu_check.compare(bank, scene, gpu_check._reconstructor(bank, "cpu", 1),
                                  gpu_check._reconstructor(bank, "cpu", 1), ("first", "second"))
    assert ok and "PASS" in table
    ok, table = gpu_check.compare(bank, scene, gpu_check._reconstructor(bank, "cpu", 1), CaptureAsIs(),
                                  ("sampler", "capture as is"))
    assert not ok and "FAIL" in table
