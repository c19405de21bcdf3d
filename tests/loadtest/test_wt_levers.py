"""``benches/wt_levers.py`` end to end at a tiny point: every server lever still serves exact streams."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benches.wt_levers import LEVERS


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (server CPU sampling)")
def test_every_lever_row_streams_exactly(tmp_path: Path) -> None:
    out = tmp_path / "levers.json"
    proc = subprocess.run(  # noqa: S603 - our own bench
        [
            sys.executable, "-m", "benches.wt_levers", "--points", "4", "--duration", "1",
            "--server-cores", "0", "--client-cores", "0", "--out", str(out),
        ],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(out.read_text())
    assert [r["lever"] for r in rows] == [label for label, *_ in LEVERS]
    for row in rows:
        report = row["report"]
        assert report["streams"]["ok"] == 4, (row["lever"], report["streams"])
        assert report["correctness"]["lost"] == 0 and report["correctness"]["duplicated"] == 0
    assert proc.stdout.count("| 4/4 |") == len(LEVERS)  # one table row each, all streams ok
