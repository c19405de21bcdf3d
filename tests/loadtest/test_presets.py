"""``tokenwire loadtest --preset``: the named comparisons, and the bench that tabulates them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from benches import compare_presets
from tokenwire.cli import _parser
from tokenwire.loadtest.compare import SUMMARY_ROWS
from tokenwire.loadtest.impair import Impairment
from tokenwire.loadtest.presets import PRESETS, preset_defaults


def _args(*argv: str) -> object:
    args = _parser().parse_args(["loadtest", *argv])
    return _parser(preset_defaults(args.preset)).parse_args(["loadtest", *argv])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_comparison(name: str) -> None:
    preset = PRESETS[name]
    impairment = Impairment.parse(preset.impair)
    assert impairment.tls, "every preset models an HTTPS SSE endpoint"
    known = {metric for metric, _, _ in SUMMARY_ROWS}
    assert preset.metrics and set(preset.metrics) <= known
    args = _args("--preset", name)
    assert args.compare == ["sse", "webtransport"]
    assert args.impair == impairment
    assert (args.streams, args.duration, args.sessions, args.ramp) == (
        preset.streams,
        preset.duration,
        preset.sessions,
        preset.ramp,
    )


def test_options_given_win_over_the_preset() -> None:
    args = _args("--preset", "hol", "--streams", "7", "--impair", "delay=1ms", "--compare", "sse")
    assert args.streams == 7
    assert args.impair == Impairment(delay=0.001)
    assert args.compare == ["sse"]
    assert args.sessions == PRESETS["hol"].sessions  # not given: the preset's


def test_unknown_preset_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["loadtest", "--preset", "nope"])
    assert exc.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.mark.timeout(180)
def test_bench_tabulates_a_small_preset_run(tmp_path: Path) -> None:
    """benches.compare_presets end to end at a tenth of the size: a server, the preset over both protocols
    through the relay, the table; every stream exact."""
    cores = "1" if len(os.sched_getaffinity(0)) > 1 else "0"
    rc = compare_presets.main(
        ["--presets", "latency", "--scale", "0.1", "--out", str(tmp_path), "--client-cores", cores]
    )
    assert rc == 0
    report = json.loads((tmp_path / "latency-0.json").read_text())
    assert report["scenario"]["preset"] == "latency"
    assert report["passed"] and set(report["runs"]) == {"sse", "webtransport"}
    assert report["runs"]["sse"]["streams"]["total"] == 5
    assert Impairment.parse(PRESETS["latency"].impair).as_dict() == report["impairment"]
    table = (tmp_path / "presets.md").read_text()
    for metric in (*PRESETS["latency"].metrics, "server CPU-s per 100k tokens"):
        assert f"| {metric} |" in table
    assert "FAIL" not in table
    assert (tmp_path / "latency-0.html").read_text().lower().startswith("<!doctype html>")
    # Both TTFTs are at least the modelled round trip (50 ms): the relay really was in the path.
    assert all(run["ttft_s"]["p50"] >= 0.05 for run in report["runs"].values())
