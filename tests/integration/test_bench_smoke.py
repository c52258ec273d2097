"""``bench/run.py --smoke``: every benchmark runs end to end at a tiny size (its timings are not judged).

Keeps bench/ from rotting (``make bench`` once crashed on a renamed function, issue 11). An API that
this branch does not have yet is reported "not available"; anything else that goes wrong fails here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pgsupport import ROOT

sys.path.insert(0, str(ROOT))
from bench.run import BENCHMARKS


def test_every_benchmark_runs_end_to_end_in_smoke_mode(tmp_path: Path) -> None:
    # Given / When
    out = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)  # fmt: skip
    # Then every benchmark ran and produced figures, and none failed
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert list(results["status"]) == BENCHMARKS
    assert all(s.startswith("ok") for s in results["status"].values()), results["status"]
    for name in ("backup", "restore", "replace", "split"):
        figures = results["benchmarks"][name]["figures"]["300"]
        assert figures and all(f["median_s"] > 0 for f in figures.values()), (name, figures)
    migsafe_runs = [f for name in ("backup", "restore", "replace")
                    for v, f in results["benchmarks"][name]["figures"]["300"].items() if v.startswith("migsafe")]
    assert migsafe_runs and all(f["maxrss_mb"] > 0 for f in migsafe_runs)  # peak RSS is measured
