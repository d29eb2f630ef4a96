"""cadfd bench: tables, figures and the quality-against-steps curve."""
from __future__ import annotations

import json

import pytest

from cadfd_ros.cli import main as cli_main

pytest.importorskip("diffusers")


def test_steps_curve_runs_each_sampler_at_each_step_count(tmp_path):
    out = tmp_path / "bench"
    code = cli_main(["bench", "--methods", "constant,classical,dps,dps:dps", "--photos", "brick", "--size", "64x80",
                     "--steps-curve", "2,1", "--device", "cpu", "--out-dir", str(out)])
    assert code == 0
    summary = json.loads((out / "bench.json").read_text())
    assert list(summary) == ["constant", "classical", "dps@1", "dps@2", "dps:dps@1", "dps:dps@2"]
    for name, metrics in summary.items():
        assert 0.0 <= metrics["tex_delta1"] <= 1.0 and metrics["aif_psnr"] > 10.0, name
    assert (out / "steps_curve.png").stat().st_size > 10_000
    assert (out / "examples.png").is_file() and "| dps:dps@2 |" in (out / "bench.md").read_text()


def test_steps_curve_rejects_bad_counts(tmp_path, capsys):
    assert cli_main(["bench", "--steps-curve", "0,5", "--out-dir", str(tmp_path)]) == 2
    assert "--steps-curve" in capsys.readouterr().err
