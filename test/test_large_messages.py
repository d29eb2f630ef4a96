"""Large messages (issue 12, item 8), real Fast DDS between processes: with
config/fastdds_large_messages.xml a best-effort subscriber in another process receives the
node's 640x480 outputs (0.9-4.9 MB) and the camera_info after them. Without the profile
(Fast DDS's 512 KiB shared-memory segment) such a subscriber got 0-16 of 20 of each on this
machine (README, QoS > Large messages), so these cells fail without it. The profile must also
load without a Fast DDS XML error: Fast DDS logs one and carries on with its defaults, which would
silently undo the fix.

Each test starts the two processes of scripts/measure_large_messages.py in a DDS domain of its
own. About 15 s in all.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("rclpy", reason="rclpy (ROS 2) is not installed")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ros_test_util import unique_domain_id  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "config" / "fastdds_large_messages.xml"
PROFILE_VAR = "FASTDDS_DEFAULT_PROFILES_FILE"

# A participant that reports the size of its own shared-memory segment (the fastdds_<id> file it
# has mapped, not a fastdds_port*), so the test sees the profile in effect, not only parsed.
PROBE = """
import json, os, rclpy
rclpy.init()
node = rclpy.create_node("profile_probe")
sizes = set()
for line in open("/proc/self/maps"):
    path = line.split()[-1]
    name = os.path.basename(path)
    if path.startswith("/dev/shm/fastdds_") and "port" not in name and not name.endswith("_el"):
        sizes.add(os.path.getsize(path))
print("SEGMENTS", json.dumps(sorted(sizes)), flush=True)
node.destroy_node()
rclpy.shutdown()
"""


def measure_script():
    spec = importlib.util.spec_from_file_location("measure_large_messages", REPO / "scripts" / "measure_large_messages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def probe(profile: Path | None, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != PROFILE_VAR}
    env["ROS_DOMAIN_ID"] = str(unique_domain_id())
    if profile is not None:
        env[PROFILE_VAR] = str(profile)
    # A clean working directory: Fast DDS also loads ./DEFAULT_FASTDDS_PROFILES.xml.
    return subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)


def test_profile_loads_without_xml_errors_and_sets_the_segment(tmp_path):
    result = probe(PROFILE, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "XMLPARSER" not in result.stderr and "Error" not in result.stderr, result.stderr
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("SEGMENTS")]
    sizes = json.loads(line.split(" ", 1)[1])
    assert sizes and min(sizes) >= 64 << 20, f"no 64 MiB shared-memory segment in use: {sizes}"

    # The check can fail: a misspelt element is reported, and the default 512 KiB segment is used.
    broken = tmp_path / "broken.xml"
    broken.write_text(PROFILE.read_text().replace("<segment_size>", "<segmentsize>")
                      .replace("</segment_size>", "</segmentsize>"))
    result = probe(broken, tmp_path)
    assert "XMLPARSER" in result.stderr and "segmentsize" in result.stderr, result.stderr


def cell(setting: str, pub_qos: str, tmp_path: Path) -> dict:
    script = measure_script()
    args = argparse.Namespace(sizes=[(640, 480)], kinds=list(script.KINDS), count=10, rate=10.0, point_step=16,
                              gap=0.2, env=[],
                              discovery_timeout=20.0, linger=1.0, cell_timeout=90.0)
    result = script.run_cell(args, setting, pub_qos, "best_effort", unique_domain_id(), tmp_path)
    assert "error" not in result, result
    return result


@pytest.mark.parametrize("setting, pub_qos", [
    ("profile", "best_effort"),      # a camera driver with the profile -> the node's SensorDataQoS input
    ("profile_pub", "reliable"),     # the node (profile from the launch file) -> Nav2 / slam_toolbox without it
])
def test_best_effort_subscriber_gets_large_messages_with_the_profile(setting, pub_qos, tmp_path):
    result = cell(setting, pub_qos, tmp_path)
    report = {name.rsplit("/", 1)[1]: (result["received"].get(name, 0), sent, result["bytes"][name])
              for name, sent in result["sent"].items()}
    assert min(size for kind, (_, _, size) in report.items() if kind != "camera_info") >= 0.6e6, report
    for kind, (received, sent, _) in report.items():
        assert sent == 10 and received >= 9, f"{setting} {pub_qos}->best_effort: {report}"
