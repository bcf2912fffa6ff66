"""The benchmarks run once at tiny size, so they cannot rot (no timing is asserted)."""
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench.py"


def test_benchmarks_run_quick(tmp_path):
    r = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd="/")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (result,) = tmp_path.glob("bench-quick-*.json")
    data = json.loads(result.read_text())
    assert set(data["pods"]) == {"shell", "shell-in-place", "ip-batch", "pyroute2", "floor", "nsbox"}
    assert {"unshare", "nsbox"} <= set(data["holder"])
    scale = data["scale"]
    assert set(scale) == {"nsbox", "floor", "nsbox bridge", "floor bridge", "nsbox routers"}
    assert {row["pods"] for row in scale.values()} == {20} and {row["block"] for row in scale.values()} == {4}
    assert all(len(run["block_ms_per_pod"]) == 5 for runs in data["scale_runs"].values() for run in runs)
    assert set(data["scale_run"]) == {"host subprocess.run", "nsbox pod.run"}
    assert data["scale_memory"]["nsbox"]["holder_pss_kb"] > 0
    # the quick probe stops at 3 pods, far below the kernel's port limit
    assert {r["alive"] for r in data["bridge_limit"].values()} == {3}
    assert data["pss_kb"]["nsbox-init"] > 0 and "pause (static, built here)" in data["pss_kb"]
