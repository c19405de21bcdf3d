"""The impairment a load test puts between its clients and the server, as one spec string.

``Impairment.parse("loss=5%,delay=50ms,jitter=10ms,rate=10mbit,rebind=30s")`` is what ``tokenwire loadtest
--impair`` takes; the relays of :mod:`tokenwire.loadtest.relays` apply it (a TCP relay for SSE, a UDP relay for
WebTransport). How each knob maps onto each protocol, and what it does not model: ``docs/impairment.md``.

Spec grammar: comma-separated ``key=value`` pairs, each key at most once; ``""`` or ``"none"`` is no
impairment. Probabilities as percentages (``5%``) or fractions (``0.05``); durations with ``us``, ``ms`` or
``s`` (a bare number is seconds); rates in bits/s (``bit``, ``kbit``, ``mbit``, ``gbit``, any case) or
bytes/s (``B``, ``KB``, ``MB``, ``GB``: powers of 1000; ``KiB``, ``MiB``, ``GiB``: powers of 1024).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Final, Literal, cast

__all__ = ["Impairment", "ImpairmentError", "effective_rto"]

Link = Literal["connection", "shared"]

MAX_SECONDS: Final = 600.0  # delay, jitter, rto: longer holds are a dead link, not a slow one
MIN_REBIND: Final = 0.1  # s; a relay that resets every connection more often lets none finish
MIN_RTO: Final = 0.2  # s; Linux's TCP_RTO_MIN
LINKS: Final = ("connection", "shared")

_KEYS: Final = {  # spec key -> field
    "loss": "loss",
    "delay": "delay",
    "jitter": "jitter",
    "reorder": "reorder",
    "dup": "duplicate",
    "duplicate": "duplicate",
    "rate": "rate",
    "rebind": "rebind",
    "link": "link",
    "rto": "rto",
    "tls": "tls",
}
_DURATION_UNITS: Final = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_BIT_UNITS: Final = {"bit": 1 / 8, "kbit": 1e3 / 8, "mbit": 1e6 / 8, "gbit": 1e9 / 8}
_BYTE_UNITS: Final = {"B": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1024.0, "MiB": 1024.0**2, "GiB": 1024.0**3}
_NUMBER: Final = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z%]*)\s*")
_SWITCH: Final = {
    **dict.fromkeys(("on", "1", "true", "yes"), True),
    **dict.fromkeys(("off", "0", "false", "no"), False),
}
_KINDS: Final = {"loss": "probability", "reorder": "probability", "duplicate": "probability", "rate": "rate"}
_AMBIGUOUS: Final = ("b", "kb", "mb", "gb")
_ACCEPTED_UNITS: Final = {
    "probability": "a percentage (5%) or a fraction (0.05)",
    "duration": "us, ms or s (a bare number is seconds)",
    "rate": "bit, kbit, mbit, gbit (bits/s) or B, KB, MB, GB, KiB, MiB, GiB (bytes/s)",
}


class ImpairmentError(ValueError):
    """A bad impairment spec or value; the message names the key, the value and what is accepted."""


def effective_rto(delay: float, jitter: float, rto: float | None) -> float:
    """The stall a lost TCP segment costs: ``rto``, or about two round trips but at least Linux's 200 ms."""
    if rto is not None:
        return rto
    return max(MIN_RTO, 2.0 * (2.0 * delay + jitter))


@dataclass(frozen=True)
class Impairment:
    """A network between clients and server. All zero: a clean link (``is_null``)."""

    loss: float = 0.0  # 0..1. UDP: each datagram dropped. TCP: each 1448-byte segment "lost" -> a stall
    delay: float = 0.0  # seconds, one way, each direction
    jitter: float = 0.0  # seconds, uniform +-jitter added to delay (UDP: reorders by itself; TCP: keeps order)
    reorder: float = 0.0  # 0..1, UDP only (TCP delivers in order)
    duplicate: float = 0.0  # 0..1, UDP only (TCP removes duplicates)
    rate: float = 0.0  # bytes/s per direction for the whole link (all flows share it); 0: unlimited
    rebind: float = 0.0  # seconds between address changes; 0: never. UDP: NAT rebinding; TCP: connections reset
    link: Link = "connection"  # TCP only: a stall holds its own connection, or ("shared") every connection
    rto: float | None = None  # TCP stall per lost segment; None: max(0.2, 2 * (2*delay + jitter))
    tls: bool = False  # TCP only: a TLS 1.3 handshake (one more round trip) before a new connection's request

    def __post_init__(self) -> None:
        for f in fields(self):
            _check_field(f.name, getattr(self, f.name))

    # ---------------------------------------------------------------- parsing

    @classmethod
    def parse(cls, spec: str) -> Impairment:
        """``"loss=5%,delay=50ms,jitter=10ms,reorder=1%,dup=1%,rate=10mbit,rebind=30s,link=shared,rto=200ms,tls=on"``."""
        if not isinstance(spec, str):
            raise ImpairmentError(f"an impairment spec is a string, got {type(spec).__name__}")
        text = spec.strip()
        if text.lower() in ("", "none"):
            return cls()
        values: dict[str, Any] = {}
        written: dict[str, str] = {}  # field -> the key as the spec wrote it
        for raw in text.split(","):
            item = raw.strip()
            if not item:
                raise ImpairmentError(f"empty item in impairment spec {spec!r} (two commas in a row?)")
            key, sep, value = item.partition("=")
            key, value = key.strip().lower(), value.strip()
            if not sep or not key or not value:
                raise ImpairmentError(f"{item!r} is not key=value; the keys are: {', '.join(_KEYS)}")
            name = _KEYS.get(key)
            if name is None:
                raise ImpairmentError(f"unknown impairment key {key!r}; the keys are: {', '.join(_KEYS)}")
            if name in written:
                raise ImpairmentError(f"{key!r} given twice (as {written[name]!r} before) in {spec!r}")
            written[name] = key
            values[name] = _parse_value(name, key, value)
            try:
                _check_field(name, values[name])
            except ImpairmentError as exc:
                raise ImpairmentError(f"{item!r}: {exc}") from None
        return cls(**values)

    # ---------------------------------------------------------------- views

    def is_null(self) -> bool:
        """True when nothing is impaired (``link``, ``rto`` and ``tls`` alone change nothing)."""
        return not any((self.loss, self.delay, self.jitter, self.reorder, self.duplicate, self.rate, self.rebind))

    @property
    def effective_rto(self) -> float:
        return effective_rto(self.delay, self.jitter, self.rto)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: every field in seconds, fractions and bytes/s, ``rto`` the effective stall."""
        out = asdict(self)
        out["rto"] = self.effective_rto
        out["rto_given"] = self.rto is not None
        return out

    def to_spec(self) -> str:
        """A spec that ``parse`` turns back into this very value (exact floats, only the fields set)."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            if f.name == "rate":
                parts.append(f"rate={value!r}B")
            elif f.name == "tls":
                parts.append("tls=on")
            else:
                parts.append(f"{f.name}={value if f.name == 'link' else repr(value)}")
        return ",".join(parts) or "none"

    def describe(self) -> str:
        """For people: ``"loss 5%, delay 50 ms, jitter 10 ms, rate 10 Mbit/s, rebind every 30 s"``, or ``"none"``."""
        shown: tuple[tuple[object, str], ...] = (
            (self.loss, f"loss {_percent(self.loss)}"),
            (self.delay, f"delay {_duration(self.delay)}"),
            (self.jitter, f"jitter {_duration(self.jitter)}"),
            (self.reorder, f"reorder {_percent(self.reorder)}"),
            (self.duplicate, f"duplicate {_percent(self.duplicate)}"),
            (self.rate, f"rate {_bitrate(self.rate)}"),
            (self.rebind, f"rebind every {_duration(self.rebind)}"),
            (self.link != "connection", f"link {self.link}"),
            (self.rto is not None, f"rto {_duration(self.rto or 0.0)}"),
            (self.tls, "tls"),
        )
        parts = [text for value, text in shown if value]
        return ", ".join(parts) or "none"

    def __str__(self) -> str:
        return self.describe()


# -------------------------------------------------------------------- helpers


def _check_field(name: str, value: object) -> None:
    if name in ("loss", "reorder", "duplicate"):
        _check_range(name, value, 0.0, 1.0, "a probability from 0 to 1 (0% to 100%)")
    elif name in ("delay", "jitter"):
        _check_range(name, value, 0.0, MAX_SECONDS, f"from 0 to {MAX_SECONDS:g} s")
    elif name == "rate":
        _check_range(name, value, 0.0, math.inf, "bytes/s: 0 (unlimited) or more")
    elif name == "rebind":
        _check_range(name, value, 0.0, math.inf, f"0 (never) or at least {MIN_REBIND:g} s")
        if 0.0 < cast(float, value) < MIN_REBIND:
            raise ImpairmentError(f"rebind: {value!r} s is too often; accepted: 0 (never) or at least {MIN_REBIND:g} s")
    elif name == "rto" and value is not None:
        _check_range(name, value, 0.0, MAX_SECONDS, f"more than 0 and at most {MAX_SECONDS:g} s")
        if value == 0.0:
            raise ImpairmentError("rto: 0 s would make a loss free; accepted: more than 0 s, or leave it out")
    elif name == "tls" and not isinstance(value, bool):
        raise ImpairmentError(f"tls: {value!r} is not a bool; accepted: on or off")
    elif name == "link" and value not in LINKS:
        raise ImpairmentError(f"link: unknown value {value!r}; accepted: {', '.join(LINKS)}")


def _check_range(name: str, value: object, low: float, high: float, accepted: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ImpairmentError(f"{name}: {value!r} is not a number; accepted: {accepted}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ImpairmentError(f"{name}: {value!r} is out of range; accepted: {accepted}")


def _parse_value(name: str, key: str, value: str) -> Any:
    if name == "link":
        if value.lower() not in LINKS:
            raise ImpairmentError(f"{key}: unknown value {value!r}; accepted: {', '.join(LINKS)}")
        return value.lower()
    if name == "tls":
        switch = _SWITCH.get(value.lower())
        if switch is None:
            raise ImpairmentError(f"{key}: unknown value {value!r}; accepted: on, off (or 1/0, true/false, yes/no)")
        return switch
    kind = _KINDS.get(name, "duration")
    match = _NUMBER.fullmatch(value)
    if match is None:
        raise ImpairmentError(f"{key}: {value!r} is not a number with a unit; accepted: {_ACCEPTED_UNITS[kind]}")
    number, unit = float(match.group(1)), match.group(2)
    if kind == "probability":
        scale = _probability_scale(key, value, number, unit)
    elif kind == "duration":
        scale = _DURATION_UNITS.get(unit.lower() if unit else "s")
    else:
        scale = _rate_scale(key, value, number, unit)
    if scale is None:
        hint = " (ambiguous: kbit for bits/s, KB for bytes/s)" if kind == "rate" and unit.lower() in _AMBIGUOUS else ""
        raise ImpairmentError(f"{key}: unknown unit {unit!r} in {value!r}{hint}; accepted: {_ACCEPTED_UNITS[kind]}")
    return number * scale


def _probability_scale(key: str, value: str, number: float, unit: str) -> float | None:
    if unit == "%":
        return 0.01
    if unit:
        return None
    if number > 1.0:
        raise ImpairmentError(f"{key}: {value!r} is more than 1; a percentage is written {value}%")
    return 1.0


def _rate_scale(key: str, value: str, number: float, unit: str) -> float | None:
    if not unit:
        if number == 0.0:
            return 1.0
        raise ImpairmentError(f"{key}: {value!r} has no unit; accepted: {_ACCEPTED_UNITS['rate']}")
    return _BIT_UNITS.get(unit.lower()) or _BYTE_UNITS.get(unit)


def _percent(p: float) -> str:
    return f"{p * 100:.3g}%"


def _duration(s: float) -> str:
    if s >= 1.0:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} us"


def _bitrate(bytes_per_s: float) -> str:
    bits = bytes_per_s * 8.0
    for scale, unit in ((1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s")):
        if bits >= scale:
            return f"{bits / scale:.3g} {unit}"
    return f"{bits:.3g} bit/s"
