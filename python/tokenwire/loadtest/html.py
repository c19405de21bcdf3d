"""The load test's HTML report: one self-contained page made from a compare report (``tokenwire loadtest --compare
... --report out.html``; the JSON shape is ``kind: tokenwire-loadtest-compare``, version 1).

The page holds the side-by-side summary table, four plots (delivery lag CDF, lag over time with cut / reconnect /
rebind markers, tokens/s over time, a per-stream completion timeline), the scenario with its impairment, and the
machine's facts. It loads nothing: no script, no stylesheet, no font, no image from anywhere, so it opens offline
and can be mailed or archived as one file.

Why these libraries (the ``report`` extra: ``pip install 'tokenwire[report]'``):

- **matplotlib** draws the plots. It is the maintained standard for static plots in Python, and its SVG output is
  inlined into the page: vector graphics that stay sharp when zoomed, need no JavaScript (a charting library
  such as Plotly or Vega would add megabytes of script to every file, or a CDN the page cannot reach offline),
  and keep the file small. Only ``matplotlib.figure.Figure`` is used, never ``pyplot``, so no GUI backend is
  touched and a caller's own pyplot state is left alone; text stays text (``svg.fonttype = "none"``), drawn in
  the reader's sans-serif font.
- **Jinja2** makes the page from ``templates/report.html.j2`` (package data) with autoescaping on, so a string
  from the run (a URL, a host name, an error message) is inserted as text and can never become markup. The
  inlined SVG is the only thing marked safe, and matplotlib escapes the text it writes into it.

Both are imported with this module (not with ``tokenwire.loadtest``): without them the import fails with a
``ModuleNotFoundError`` that says ``pip install 'tokenwire[report]'``, and ``tokenwire loadtest --report`` imports
this module before the run starts, so it stops at once with that message.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenwire.errors import TokenwireError

try:
    import jinja2
    import matplotlib
    from markupsafe import Markup, escape
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
except ImportError as exc:
    # A ModuleNotFoundError naming the missing module: `tokenwire loadtest --report` imports this module before the
    # run starts and says what to install.
    raise ModuleNotFoundError(
        f"the HTML report needs {exc.name or 'matplotlib and Jinja2'}: pip install 'tokenwire[report]'", name=exc.name
    ) from exc

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "INSTALL_HINT",
    "ReportFormatError",
    "render_html",
    "write_html",
]

INSTALL_HINT = "pip install 'tokenwire[report]'"
REPORT_KIND = "tokenwire-loadtest-compare"
REPORT_VERSION = 1

#: The most streams the completion timeline draws per protocol; above it, every failed stream and an even
#: sample of the others (the page says so).
TIMELINE_MAX_STREAMS = 60
#: Event kinds of the lag-over-time strip, top to bottom, with their marker and colour.
EVENT_STYLES: dict[str, tuple[str, str]] = {
    "forced_cut": ("v", "#7b3294"),
    "cut": ("x", "#c0392b"),
    "reconnect": ("|", "#555555"),
    "resumed": (".", "#1a9850"),
    "rebind": ("D", "#e08214"),
}
_PROTOCOL_COLOURS = {"sse": "#3b6fb6", "webtransport": "#1b9e77"}
_OTHER_COLOURS = ("#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
_FAILED_COLOUR = "#d62728"
_RC: dict[Any, Any] = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"],
    "font.size": 9.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
}


class ReportFormatError(TokenwireError, ValueError):
    """The dict given is not a compare report this module can render."""


def write_html(report: dict[str, Any], path: str | Path) -> None:
    """Renders ``report`` and writes the page to ``path`` (UTF-8)."""
    Path(path).write_text(render_html(report), encoding="utf-8")


def render_html(report: dict[str, Any]) -> str:
    """One self-contained HTML page for a compare report (see the module docstring)."""
    _check(report)
    protocols = [str(p) for p in report.get("protocols") or report["runs"]]
    runs: dict[str, dict[str, Any]] = {p: report["runs"].get(p) or {} for p in protocols}
    colours = _colours(protocols)
    timeline_notes: list[str] = []
    with matplotlib.rc_context(_RC):  # read while drawing as well as while saving
        plots = {
            "lag_cdf": _plot_lag_cdf(protocols, runs, colours),
            "lag_time": _plot_lag_time(protocols, runs, colours),
            "tokens": _plot_tokens(protocols, runs, colours),
            "timeline": _plot_timeline(protocols, runs, colours, timeline_notes),
        }
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("tokenwire.loadtest", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    env.tests["bad"] = _is_bad
    template = env.get_template("report.html.j2")
    return template.render(
        report=report,
        protocols=protocols,
        runs=runs,
        colours=colours,
        summary=[_summary_row(row, protocols) for row in report.get("summary") or ()],
        passed=report.get("passed"),
        plots={k: Markup(v) for k, v in plots.items()},  # noqa: S704 - matplotlib SVG, its text escaped
        timeline_notes=timeline_notes,
        lag_notes=_notes(protocols, runs, "lag_cdf"),
        series_notes=_notes(protocols, runs, "series"),
        run_facts=_run_facts(protocols, runs),
        impairment_rows=_impairment_rows(report.get("impairment")),
    )


# --- input -------------------------------------------------------------------------------------------------------


def _check(report: Any) -> None:
    if not isinstance(report, Mapping):
        raise ReportFormatError(f"a compare report is a dict, not {type(report).__name__}")
    kind, version = report.get("kind"), report.get("version")
    if kind != REPORT_KIND or version != REPORT_VERSION:
        raise ReportFormatError(
            f"not a compare report: kind {kind!r} version {version!r} (expected {REPORT_KIND!r} version "
            f"{REPORT_VERSION}; `tokenwire loadtest --json` writes one with --compare or --impair)"
        )
    if not isinstance(report.get("runs"), Mapping):
        raise ReportFormatError("a compare report needs 'runs': a dict of protocol -> run report")


def _notes(protocols: Sequence[str], runs: Mapping[str, Mapping[str, Any]], part: str) -> list[str]:
    """The runs' ``note`` on one part of their report (e.g. percentiles that are an upper bound), as
    "protocol: note"."""
    notes = []
    for p in protocols:
        d = runs[p].get(part)
        if isinstance(d, Mapping) and d.get("note"):
            notes.append(f"{p}: {d['note']}")
    return notes


def _num(value: Any) -> float:
    """A plottable float: None and non-numbers become NaN (a gap in a line)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _floats(values: Any) -> list[float]:
    return [_num(v) for v in values] if isinstance(values, list) else []


def _colours(protocols: Sequence[str]) -> dict[str, str]:
    others = iter(_OTHER_COLOURS * (len(protocols) // len(_OTHER_COLOURS) + 1))
    return {p: _PROTOCOL_COLOURS.get(p) or next(others) for p in protocols}


def _label(text: str) -> str:
    """Text for a matplotlib label taken as it is: ``$`` would start mathtext, and a leading ``_`` hides a legend
    entry."""
    text = text.replace("$", r"\$")
    return " " + text if text.startswith("_") else text


# --- formatting --------------------------------------------------------------------------------------------------


def _fmt(value: Any, unit: str = "") -> str:
    """A value for the page: seconds scaled to µs/ms/s, fractions as %, counts with thousands separators, None as
    n/a."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if unit == "s":
            return _fmt_seconds(value)
        if unit == "%":
            return f"{value * 100:.3g}%"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    if isinstance(value, list):
        shown = ", ".join(_fmt(v, unit) for v in value[:8])
        return shown + (f", … ({len(value)} in all)" if len(value) > 8 else "") if value else "none"
    return str(value)


def _fmt_seconds(value: float) -> str:
    a = abs(value)
    if a == 0:
        return "0 ms"
    if a < 1e-3:
        return f"{value * 1e6:.3g} µs"
    if a < 1:
        return f"{value * 1e3:.3g} ms"
    return f"{value:,.3g} s" if a < 1000 else f"{value:,.0f} s"


_ZERO_ROWS = ("lost", "duplicated")


def _is_bad(row: Mapping[str, Any], protocol: str | None = None) -> bool:
    """A lost/duplicated row (which must be 0) holding a non-zero value (for ``protocol``, or any)."""
    if not str(row.get("metric", "")).strip().lower().startswith(_ZERO_ROWS):
        return False
    keys = [protocol] if protocol else list(row["values"])
    return any(isinstance(v, int | float) and v != 0 for v in (row["values"].get(k) for k in keys))


def _summary_row(row: Mapping[str, Any], protocols: Sequence[str]) -> dict[str, Any]:
    return {
        "metric": str(row.get("metric", "")),
        "unit": str(row.get("unit") or ""),
        "values": {p: row.get(p) for p in protocols},
    }


def _run_facts(
    protocols: Sequence[str], runs: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, unit, {protocol: value}) rows of the runs' facts for the configuration section; a fact a run does
    not have is n/a there."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for p in protocols:
        run = runs[p]
        streams = run.get("streams") or {}
        wire = run.get("wire") or {}
        facts: list[tuple[str, str, Any]] = [
            ("result", "", "PASS" if run.get("passed") else "FAIL"),
            ("error", "", run.get("error") or "none"),
            ("elapsed", "s", run.get("elapsed_s")),
            ("streams ok / total", "", f"{_fmt(streams.get('ok'))} / {_fmt(streams.get('total'))}"),
            ("stream errors", "", streams.get("errors") or "none"),
            ("bytes down / up (client)", "", f"{_fmt(wire.get('bytes_down'))} / {_fmt(wire.get('bytes_up'))}"),
            ("events not recorded", "", run.get("events_dropped")),
        ]
        relay = run.get("relay")
        if isinstance(relay, Mapping):
            started = _num(run.get("started_at"))
            side = _RELAY_SIDES.get(p)
            if (
                side is not None and side in relay
            ):  # only the relay this protocol went through: the other one's counters are zeros
                facts.append(("relay", "", _relay_stats(relay[side], started, via=f"{side.upper()} relay")))
            else:  # a protocol this page does not know: every relay
                facts.extend((f"relay {k}", "", _relay_stats(v, started)) for k, v in relay.items())
        for name, unit, v in facts:
            rows.setdefault((name, unit), {})[p] = v
    return [(name, unit, cells) for (name, unit), cells in rows.items()]


#: The relay each protocol goes through (its key in RelayProcess stats).
_RELAY_SIDES = {"sse": "tcp", "webtransport": "udp"}


def _relay_stats(stats: Any, started: float, via: str | None = None) -> Any:
    """A relay's stats for the page (headed by ``via``, which relay they are): durations (``*_seconds``) in their
    unit, its rebind times (epoch seconds) as seconds since the run started."""
    if not isinstance(stats, Mapping):
        return stats
    out: dict[str, Any] = {"via": via} if via else {}
    out.update((str(k), _fmt(v, "s") if str(k).endswith("_seconds") else v) for k, v in stats.items())
    rebinds = out.get("rebinds")
    if isinstance(rebinds, list) and math.isfinite(started):
        out["rebinds"] = f"{len(rebinds)}" + (
            " (at "
            + ", ".join(_fmt(_num(t) - started, "s") for t in rebinds[:8])
            + (", …)" if len(rebinds) > 8 else ")")
            if rebinds
            else ""
        )
    return out


#: Units of the impairment's fields (Impairment.as_dict), for the page.
_IMPAIRMENT_UNITS = {
    "loss": "%",
    "reorder": "%",
    "duplicate": "%",
    "delay": "s",
    "jitter": "s",
    "rto": "s",
    "rebind": "s",
}


def _impairment_rows(impairment: Any) -> list[tuple[str, Any, str]]:
    if not isinstance(impairment, Mapping):
        return []
    return [(str(k), v, _IMPAIRMENT_UNITS.get(str(k), "")) for k, v in impairment.items()]


# --- plots -------------------------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig: Figure, name: str, title: str) -> str:
    """The figure as an inline ``<svg>``: no XML prolog, DOCTYPE or metadata; scales to its container; every id
    (and each reference to one) prefixed with ``name``, so the plots of one page never share an id."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "tokenwire"}):  # the same page for the same report
        fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.DOTALL)
    text = re.sub(r"<[^>]+>", lambda tag: _prefix_ids(tag[0], name), text)
    head_end = text.index(">")
    head = re.sub(r'\s(width|height)="[^"]*"', "", text[:head_end])
    return f'{head} role="img" aria-label="{escape(title)}" preserveAspectRatio="xMidYMid meet"{text[head_end:]}'


def _prefix_ids(tag: str, name: str) -> str:
    """``id="x"``, ``href="#x"`` and ``url(#x)`` in one SVG tag, with ``x`` prefixed by ``name``."""
    tag = re.sub(r'(\sid=")', rf"\1{name}-", tag)
    tag = re.sub(r'(href="#)', rf"\1{name}-", tag)
    return re.sub(r"(url\(#)", rf"\1{name}-", tag)


def _empty(ax: Axes, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#888888")
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_lag_cdf(protocols: Sequence[str], runs: Mapping[str, Mapping[str, Any]], colours: Mapping[str, str]) -> str:
    """Delivery lag and schedule lateness, one CDF line per protocol. y on a logit axis, so the tail (p90, p99,
    max) gets as much room as the middle; x in ms on a symlog axis (linear below 1 ms, so zeros show)."""
    fig = _figure(10, 3.8)
    axes = fig.subplots(1, 2, sharey=True)
    top = _CDF_TICKS[-1]
    for ax, key, title in (
        (axes[0], "lag_s", "delivery lag (token produced → received)"),
        (axes[1], "lateness_s", "schedule lateness (received vs. the asked pace)"),
    ):
        drawn = 0
        for p in protocols:
            run = runs[p]
            values = _floats((run.get("lag_cdf") or {}).get(key))
            qs = _floats(run.get("quantiles"))
            pairs = [(v * 1e3, min(q, top)) for v, q in zip(values, qs, strict=False) if math.isfinite(v) and 0 < q]
            if not pairs:
                continue
            xs, ys = zip(*pairs, strict=True)
            ax.plot(xs, ys, color=colours[p], label=_label(p), linewidth=1.8, drawstyle="steps-post")
            drawn += 1
        ax.set_title(title)
        if not drawn:
            _empty(ax)
            continue
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.6)
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))
        ax.set_xlabel("ms (symmetric log scale)")
        ax.set_yscale("logit")
        ax.set_ylim(_CDF_TICKS[0] * 0.8, top)
        ax.yaxis.set_major_locator(FixedLocator(_CDF_TICKS))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda q, _: "max" if q >= top else f"p{q * 100:g}"))
        ax.tick_params(labelleft=True)
        ax.legend(loc="lower right")
    axes[0].set_ylabel("share of tokens at or below")
    return _svg(fig, "lag-cdf", "delivery lag and lateness CDF per protocol")


#: The CDF's y ticks; the largest stands for the maximum (q = 1, which a logit axis cannot place).
_CDF_TICKS = (0.01, 0.1, 0.5, 0.9, 0.99, 0.999)


def _plain(value: float, _pos: Any = None) -> str:
    """A tick label without powers of ten: 0.1, 1, 10, 1000."""
    return f"{value:g}" if abs(value) < 1e5 else f"{value:.0e}"


def _events_by_kind(run: Mapping[str, Any]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {kind: [] for kind in EVENT_STYLES}
    for e in run.get("events") or ():
        if isinstance(e, Mapping) and e.get("kind") in out and math.isfinite(_num(e.get("t"))):
            out[str(e["kind"])].append(float(e["t"]))
    return out


def _plot_lag_time(protocols: Sequence[str], runs: Mapping[str, Mapping[str, Any]], colours: Mapping[str, str]) -> str:
    """Per protocol: lag p50/p99 (and max, faint) per time bucket on a log axis, above a strip with one row per
    event kind; rebinds are also drawn across the lag panel."""
    fig = _figure(10, 1.0 + 2.6 * len(protocols))
    grid = fig.add_gridspec(2 * len(protocols), 1, height_ratios=[3, 1.3] * len(protocols))
    first: Axes | None = None
    for k, p in enumerate(protocols):
        run = runs[p]
        series = run.get("series") or {}
        ax = fig.add_subplot(grid[2 * k], sharex=first)
        strip = fig.add_subplot(grid[2 * k + 1], sharex=ax)
        first = first or ax
        t = _floats(series.get("t"))
        drawn = False
        for key, label, style in (
            ("lag_max_s", "max", {"linewidth": 0.8, "alpha": 0.35, "linestyle": "--"}),
            ("lag_p99_s", "p99", {"linewidth": 1.4, "alpha": 0.9}),
            ("lag_p50_s", "p50", {"linewidth": 1.8}),
        ):
            ys = [v * 1e3 if v > 0 else math.nan for v in _floats(series.get(key))]
            n = min(len(t), len(ys))
            if n and any(math.isfinite(y) for y in ys[:n]):
                ax.plot(t[:n], ys[:n], color=colours[p], label=label, **style)
                drawn = True
        ax.set_title(f"{_label(p)}: delivery lag per {_fmt(_num(series.get('interval_s')), 's')} bucket", loc="left")
        events = _events_by_kind(run)
        for x in events["rebind"]:
            ax.axvline(x, color=EVENT_STYLES["rebind"][1], linewidth=1.0, linestyle="--", alpha=0.8)
        if drawn:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(_plain))
            ax.set_ylabel("lag, ms (log)")
            ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=3, borderaxespad=0.2)
        else:
            _empty(ax, "no lag series")
        ax.tick_params(labelbottom=False)
        kinds = list(EVENT_STYLES)
        for row, kind in enumerate(kinds):
            marker, colour = EVENT_STYLES[kind]
            xs = events[kind]
            if xs:
                strip.scatter(xs, [row] * len(xs), marker=marker, color=colour, s=18, alpha=0.6, linewidths=1.0)
        strip.set_yticks(range(len(kinds)), [f"{kind} ({len(events[kind])})" for kind in kinds], fontsize=7.5)
        strip.set_ylim(len(kinds) - 0.5, -0.5)
        strip.grid(axis="y", alpha=0.15)
        dropped = run.get("events_dropped")
        if isinstance(dropped, int) and dropped > 0:
            strip.set_title(f"{dropped:,} more events not recorded", loc="right", fontsize=7.5, color="#888888")
        strip.set_xlabel("s since this protocol's run started")
        if not t and not any(events.values()):
            strip.set_xlim(0, 1)
    return _svg(fig, "lag-time", "delivery lag over time with cut, reconnect and rebind markers")


def _plot_tokens(protocols: Sequence[str], runs: Mapping[str, Mapping[str, Any]], colours: Mapping[str, str]) -> str:
    """Tokens/s received and active streams per time bucket, one line per protocol (each from its own start)."""
    fig = _figure(10, 4.2)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    drawn = 0
    for p in protocols:
        series = runs[p].get("series") or {}
        t = _floats(series.get("t"))
        for ax, key in ((top, "tokens_per_s"), (bottom, "active")):
            ys = _floats(series.get(key))
            n = min(len(t), len(ys))
            if n:
                ax.plot(t[:n], ys[:n], color=colours[p], label=_label(p), linewidth=1.6, drawstyle="steps-post")
                drawn += 1
    top.set_title("tokens received per second (all streams)", loc="left")
    top.set_ylabel("tokens/s")
    bottom.set_ylabel("active streams")
    bottom.set_xlabel("s since each protocol's run started")
    if drawn:
        top.legend(loc="upper right")
        top.set_ylim(bottom=0)
        bottom.set_ylim(bottom=0)
    else:
        _empty(top, "no series")
        _empty(bottom, "")
    return _svg(fig, "tokens", "tokens per second and active streams over time")


def _sample_streams(timeline: list[Mapping[str, Any]], cap: int) -> list[Mapping[str, Any]]:
    """Every stream when they fit; else every failed one (up to ``cap``) and an even sample of the rest."""
    if len(timeline) <= cap:
        return timeline
    failed = [s for s in timeline if not s.get("ok")][:cap]
    ok = [s for s in timeline if s.get("ok")]
    room = cap - len(failed)
    picked = [ok[round(i * (len(ok) - 1) / max(1, room - 1))] for i in range(room)] if room and ok else []
    return failed + list({id(s): s for s in picked}.values())


def _timeline_rows(run: Mapping[str, Any]) -> Iterator[tuple[Mapping[str, Any], float, float]]:
    """(stream, start, end) with numbers; an unfinished stream ends at the run's end."""
    elapsed = _num(run.get("elapsed_s"))
    for s in run.get("timeline") or ():
        if not isinstance(s, Mapping):
            continue
        start = _num(s.get("start_s"))
        end = _num(s.get("end_s"))
        if not math.isfinite(start):
            continue
        if not math.isfinite(end):
            end = elapsed if math.isfinite(elapsed) else start
        yield s, start, end


def _plot_timeline(
    protocols: Sequence[str], runs: Mapping[str, Mapping[str, Any]], colours: Mapping[str, str], notes: list[str]
) -> str:
    """Per protocol (side by side): a bar per stream from start to end, failed streams red, a tick at the first
    token, an x at each cut; sampled down to :data:`TIMELINE_MAX_STREAMS` with a note."""
    rows = {p: list(_timeline_rows(runs[p])) for p in protocols}
    shown_max = max((min(len(r), TIMELINE_MAX_STREAMS) for r in rows.values()), default=0)
    fig = _figure(10 if len(protocols) > 1 else 8, 1.5 + 0.09 * max(shown_max, 10))
    axes = fig.subplots(1, len(protocols), sharex=True, squeeze=False)[0]
    for ax, p in zip(axes, protocols, strict=True):
        everything = rows[p]
        picked_ids = {id(s) for s in _sample_streams([s for s, _, _ in everything], TIMELINE_MAX_STREAMS)}
        shown = sorted(((s, a, b) for s, a, b in everything if id(s) in picked_ids), key=lambda r: (r[1], r[2]))
        title = f"{_label(p)}: {len(everything)} streams"
        if len(shown) < len(everything):
            title = f"{_label(p)}: {len(shown)} of {len(everything)} streams"
            notes.append(
                f"{p}: {len(shown)} of {len(everything)} streams drawn (every failed stream, then an even sample "
                "of the rest, ordered by start)"
            )
        ax.set_title(title, loc="left")
        if not shown:
            _empty(ax, "no streams")
            continue
        cuts: dict[Any, list[float]] = {}
        for e in runs[p].get("events") or ():
            if isinstance(e, Mapping) and e.get("kind") in ("cut", "forced_cut") and e.get("stream") is not None:
                cuts.setdefault(e["stream"], []).append(_num(e.get("t")))
        ys = range(len(shown))
        ax.barh(
            ys,
            [b - a for _, a, b in shown],
            left=[a for _, a, _ in shown],
            height=0.7,
            color=[colours[p] if s.get("ok") else _FAILED_COLOUR for s, _, _ in shown],
            alpha=0.85,
        )
        first = [(_num(s.get("first_token_s")), y) for y, (s, _, _) in zip(ys, shown, strict=True)]
        first = [(x, y) for x, y in first if math.isfinite(x)]
        if first:
            ax.scatter(*zip(*first, strict=True), marker="|", color="black", s=40, linewidths=1.2, zorder=3)
        marks = [(x, y) for y, (s, _, _) in zip(ys, shown, strict=True) for x in cuts.get(s.get("stream"), ())]
        marks = [(x, y) for x, y in marks if math.isfinite(x)]
        if marks:
            ax.scatter(*zip(*marks, strict=True), marker="x", color="black", s=16, linewidths=0.9, zorder=4)
        ax.set_ylim(len(shown) - 0.5, -0.5)
        ax.set_yticks([])
        ax.set_xlabel("s since this protocol's run started")
    ends = [b for r in rows.values() for _, _, b in r] + [
        x for p in protocols for e in runs[p].get("events") or () if isinstance(e, Mapping) for x in [_num(e.get("t"))]
    ]
    right = max((x for x in ends if math.isfinite(x)), default=0.0)
    if right > 0:
        axes[0].set_xlim(0, right * 1.02)  # shared: every panel on one time scale, from each run's start
    axes[0].set_ylabel("streams, by start time")
    handles: list[Any] = [Patch(color=colours[p], label=f"{_label(p)} stream (completed)") for p in protocols]
    handles += [
        Patch(color=_FAILED_COLOUR, label="failed stream"),
        Line2D([], [], marker="|", color="black", linestyle="none", markersize=8, label="first token"),
        Line2D([], [], marker="x", color="black", linestyle="none", markersize=5, label="cut"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    return _svg(fig, "timeline", "per-stream completion timeline")
