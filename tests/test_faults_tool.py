"""python -m dn2.tools.faults: the fault table RELIABILITY.md quotes, with nothing crashed,
hung or lost."""

from __future__ import annotations

import json
import subprocess
import sys

from tiny_model import make_tiny_model


def test_the_fault_table_has_no_crash_hang_or_lost_result(tmp_path):
    model = make_tiny_model(tmp_path / "tiny.onnx", dim=16)
    out = tmp_path / "faults.json"
    r = subprocess.run(
        [sys.executable, "-m", "dn2.tools.faults", "--model", str(model), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert "| what | cases |" in r.stdout and len(rows) == 7
    assert all(row["crashes"] == row["hangs"] == row["lost"] == 0 for row in rows), rows
    images = rows[0]
    assert images["cases"] > 100 and images["refused"] + images["accepted"] == images["cases"]
    assert rows[4]["cases"] > 250 and rows[5]["cases"] > 250  # bundle mutations, both banks
