"""The ``--impair`` spec: parsing, units, clear errors, round trips."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenwire.loadtest.impair import Impairment, ImpairmentError, effective_rto


def test_the_full_spec() -> None:
    imp = Impairment.parse(
        "loss=5%,delay=50ms,jitter=10ms,reorder=1%,dup=1%,rate=10mbit,rebind=30s,link=shared,rto=200ms,tls=on"
    )
    assert imp == Impairment(
        loss=0.05,
        delay=0.05,
        jitter=0.01,
        reorder=0.01,
        duplicate=0.01,
        rate=1_250_000.0,
        rebind=30.0,
        link="shared",
        rto=0.2,
        tls=True,
    )
    assert not imp.is_null()
    assert imp.describe() == (
        "loss 5%, delay 50 ms, jitter 10 ms, reorder 1%, duplicate 1%, rate 10 Mbit/s, rebind every 30 s, "
        "link shared, rto 200 ms, tls"
    )
    assert str(imp) == imp.describe()


@pytest.mark.parametrize("spec", ["", "none", "  NONE ", " "])
def test_empty_and_none_are_no_impairment(spec: str) -> None:
    imp = Impairment.parse(spec)
    assert imp == Impairment()
    assert imp.is_null()
    assert imp.describe() == "none"
    assert imp.to_spec() == "none"


@pytest.mark.parametrize(
    ("spec", "field", "expected"),
    [
        ("loss=5%", "loss", 0.05),
        ("loss=0.05", "loss", 0.05),
        ("loss=100%", "loss", 1.0),
        ("loss=0", "loss", 0.0),
        ("delay=50ms", "delay", 0.05),
        ("delay=0.05", "delay", 0.05),
        ("delay=1.5s", "delay", 1.5),
        ("delay=250us", "delay", 250e-6),
        ("delay=2MS", "delay", 0.002),
        ("jitter=.5ms", "jitter", 0.0005),
        ("rebind=30s", "rebind", 30.0),
        ("rebind=0", "rebind", 0.0),
        ("rto=1e-1", "rto", 0.1),
        ("rate=10mbit", "rate", 1_250_000.0),
        ("rate=10Mbit", "rate", 1_250_000.0),
        ("rate=8kbit", "rate", 1000.0),
        ("rate=1gbit", "rate", 125_000_000.0),
        ("rate=800bit", "rate", 100.0),
        ("rate=100B", "rate", 100.0),
        ("rate=2KB", "rate", 2000.0),
        ("rate=3MB", "rate", 3e6),
        ("rate=1MiB", "rate", 1024.0 * 1024.0),
        ("rate=0", "rate", 0.0),
        ("dup=2%", "duplicate", 0.02),
        ("duplicate=2%", "duplicate", 0.02),
        ("link=Shared", "link", "shared"),
        ("link=connection", "link", "connection"),
        (" LOSS = 1% ", "loss", 0.01),
        ("tls=on", "tls", True),
        ("tls=ON", "tls", True),
        ("tls=1", "tls", True),
        ("tls=true", "tls", True),
        ("tls=yes", "tls", True),
        ("tls=off", "tls", False),
        ("tls=0", "tls", False),
        ("tls=False", "tls", False),
        ("tls=no", "tls", False),
    ],
)
def test_units(spec: str, field: str, expected: object) -> None:
    got = getattr(Impairment.parse(spec), field)
    assert got == pytest.approx(expected) if isinstance(expected, float) else got == expected


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("lost=5%", ["unknown impairment key 'lost'", "loss, delay"]),
        ("loss=5%,loss=6%", ["'loss' given twice"]),
        ("dup=1%,duplicate=2%", ["'duplicate' given twice", "as 'dup' before"]),
        ("loss=5", ["more than 1", "5%"]),
        ("loss=5x", ["unknown unit 'x'", "percentage"]),
        ("loss=150%", ["loss", "out of range", "0% to 100%"]),
        ("loss=-1%", ["loss", "out of range"]),
        ("delay=5min", ["unknown unit 'min'", "us, ms or s"]),
        ("delay=-5ms", ["'delay=-5ms'", "out of range"]),
        ("delay=1h", ["unknown unit 'h'"]),
        ("delay=fast", ["not a number", "us, ms or s"]),
        ("delay=nan", ["not a number"]),
        ("delay=1000s", ["out of range", "600 s"]),
        ("rate=10", ["has no unit", "kbit", "KB"]),
        ("rate=10kb", ["ambiguous", "kbit for bits/s"]),
        ("rate=10mbps", ["unknown unit 'mbps'"]),
        ("rate=1e400B", ["rate", "out of range"]),
        ("rebind=10ms", ["too often", "0.1 s"]),
        ("rto=0", ["rto", "more than 0"]),
        ("link=bus", ["unknown value 'bus'", "connection, shared"]),
        ("tls=maybe", ["tls", "unknown value 'maybe'", "on, off"]),
        ("tls=2", ["tls", "unknown value '2'"]),
        ("tls=on,tls=off", ["'tls' given twice"]),
        ("loss", ["not key=value"]),
        ("loss=", ["not key=value"]),
        ("=5%", ["not key=value"]),
        ("loss=1%,,delay=1ms", ["empty item"]),
        ("loss=1%,", ["empty item"]),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, words: list[str]) -> None:
    with pytest.raises(ImpairmentError) as info:
        Impairment.parse(spec)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"loss": 1.5},
        {"reorder": -0.1},
        {"duplicate": math.nan},
        {"delay": -1.0},
        {"jitter": math.inf},
        {"rate": -1.0},
        {"rebind": 0.01},
        {"rto": 0.0},
        {"link": "bus"},
        {"loss": "5%"},
        {"delay": True},
        {"tls": "on"},
        {"tls": 1},
    ],
)
def test_the_constructor_checks_too(kwargs: dict[str, object]) -> None:
    with pytest.raises(ImpairmentError, match=next(iter(kwargs))):
        Impairment(**kwargs)  # type: ignore[arg-type]


def test_not_a_string() -> None:
    with pytest.raises(ImpairmentError, match="string"):
        Impairment.parse(5)  # type: ignore[arg-type]


def test_effective_rto() -> None:
    assert Impairment().as_dict()["rto"] == 0.2  # Linux's minimum RTO
    assert Impairment(delay=0.1, jitter=0.02).as_dict()["rto"] == pytest.approx(2 * (0.2 + 0.02))
    assert Impairment(delay=0.1, rto=0.05).as_dict()["rto"] == 0.05
    assert effective_rto(0.5, 0.0, None) == 2.0
    assert Impairment(delay=0.5).effective_rto == 2.0


def test_is_null_ignores_link_rto_and_tls() -> None:
    assert Impairment(link="shared", rto=1.0, tls=True).is_null()
    for field in ("loss", "delay", "jitter", "reorder", "duplicate", "rate", "rebind"):
        assert not Impairment(**{field: 0.5}).is_null(), field  # type: ignore[arg-type]


def test_as_dict_is_json_ready() -> None:
    imp = Impairment.parse("loss=1%,rate=1mbit,link=shared,tls=yes")
    d = json.loads(json.dumps(imp.as_dict()))
    assert d == {
        "loss": 0.01,
        "delay": 0.0,
        "jitter": 0.0,
        "reorder": 0.0,
        "duplicate": 0.0,
        "rate": 125_000.0,
        "rebind": 0.0,
        "link": "shared",
        "rto": 0.2,
        "rto_given": False,
        "tls": True,
    }


def test_describe_picks_readable_units() -> None:
    assert Impairment(delay=0.0002, rate=100.0).describe() == "delay 200 us, rate 800 bit/s"
    assert Impairment(delay=2.5, rate=2000.0, loss=0.125).describe() == "loss 12.5%, delay 2.5 s, rate 16 kbit/s"
    assert Impairment(rate=2e9).describe() == "rate 16 Gbit/s"


_probability = st.floats(0.0, 1.0)
_seconds = st.floats(0.0, 600.0)


@st.composite
def impairments(draw: st.DrawFn) -> Impairment:
    return Impairment(
        loss=draw(_probability),
        delay=draw(_seconds),
        jitter=draw(_seconds),
        reorder=draw(_probability),
        duplicate=draw(_probability),
        rate=draw(st.floats(0.0, 1e12)),
        rebind=draw(st.just(0.0) | st.floats(0.1, 1e6)),
        link=draw(st.sampled_from(["connection", "shared"])),
        rto=draw(st.none() | st.floats(1e-6, 600.0)),
        tls=draw(st.booleans()),
    )


@given(impairments())
def test_to_spec_round_trips_exactly(imp: Impairment) -> None:
    assert Impairment.parse(imp.to_spec()) == imp
    shouted = imp.to_spec().replace("loss=", "LOSS=").replace("link=", "Link=").replace("=on", "=ON")
    assert Impairment.parse(shouted) == imp


@given(
    st.integers(0, 100),
    st.integers(0, 10_000),
    st.sampled_from([("us", 1e-6), ("ms", 1e-3), ("s", 1.0), ("", 1.0)]),
    st.sampled_from([("kbit", 125.0), ("mbit", 125_000.0), ("KB", 1000.0), ("B", 1.0)]),
)
def test_written_values_parse_to_their_meaning(
    percent: int, amount: int, duration: tuple[str, float], rate: tuple[str, float]
) -> None:
    d_unit, d_scale = duration
    r_unit, r_scale = rate
    rto = f",rto={amount or 1}{d_unit}" if amount * d_scale <= 600 else ""
    spec = f"loss={percent}%,jitter={amount}ms,delay={min(amount, 600)}{d_unit},rate={amount}{r_unit}{rto}"
    imp = Impairment.parse(spec)
    assert imp.loss == pytest.approx(percent / 100)
    assert imp.jitter == pytest.approx(amount / 1000)
    assert imp.delay == pytest.approx(min(amount, 600) * d_scale)
    assert imp.rate == pytest.approx(amount * r_scale)
    assert Impairment.parse(imp.to_spec()) == imp


def test_the_docs_examples_run() -> None:
    """Every ``python`` block of docs/impairment.md runs as written, and prints what it says it prints."""
    doc = Path(__file__).parents[2] / "docs" / "impairment.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.DOTALL)
    assert len(blocks) == 2
    outputs = []
    for block in blocks:
        proc = subprocess.run(  # noqa: S603 - runs our own docs
            [sys.executable, "-c", block], capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 0 and not proc.stderr, proc.stderr
        outputs.append(proc.stdout)
    comments = re.findall(r"print\(.*?\)  # (.*)", blocks[0])
    assert outputs[0].splitlines()[0] == comments[0]
    assert outputs[0].splitlines()[1].startswith(comments[1].split(":")[0])
    assert re.fullmatch(r"\d+ stalls of 0.05 s\n", outputs[1])
