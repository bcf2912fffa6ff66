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
    assert data["scale"]["nsbox"]["pods"] == data["scale"]["floor"]["pods"] == data["scale"]["nsbox bridge"]["pods"] == 20
    assert data["pss_kb"]["nsbox-init"] > 0 and "pause (static, built here)" in data["pss_kb"]
