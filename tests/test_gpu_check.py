"""The GPU check's logic, run on the CPU (scripts/gpu_check.py --dry-run): every stage
runs, within its time box, and writes its rows as it goes."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path):
    out = subprocess.run([sys.executable, "scripts/gpu_check.py", "--dry-run", "--budget", "420", "--out",
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    stages = {r["stage"]: r["status"] for r in rows if "status" in r and "seconds" in r}
    assert set(stages) == {"preflight", "build", "ops", "determinism", "cuda-graph", "compile", "train", "profile",
                           "tests"}, stages
    assert all(s == "ok" for s in stages.values()), stages
    ops = [r for r in rows if r["stage"] == "ops" and "impl" in r]
    assert {r["impl"] for r in ops} >= {"torch", "cpu"}
    assert all(r["max_err"] < 1e-4 for r in ops), [r for r in ops if r["max_err"] >= 1e-4]
    assert all(r["bitwise_equal"] for r in rows if "bitwise_equal" in r)
    assert "| layer | dtype | pass | impl |" in (tmp_path / "gpu_check.md").read_text()
    print((tmp_path / "gpu_check.md").read_text())
