"""The load test's HTML report (``tokenwire.loadtest.html``): one self-contained page per compare report.

The pages come from a real ``tokenwire loadtest --compare sse,webtransport --impair ... --json --report`` run (the
session's ``real_compare`` fixture), and from synthetic reports (``tests/support/compare_report.py``) for the shapes
a real run cannot give cheaply: one protocol, a failed run with nulls, many streams, hostile strings. They are
parsed back with the standard library's HTML parser: the summary table holds the report's numbers, every plot is
an inline ``<svg>``, nothing is loaded from anywhere, strings from the run are escaped.
"""

from __future__ import annotations

import importlib
import importlib.resources
import re
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.support.compare_report import PAGE_IDS as IDS
from tests.support.compare_report import PLOT_IDS as PLOTS
from tests.support.compare_report import RealRun, compare_report
from tokenwire.loadtest.html import (
    INSTALL_HINT,
    TIMELINE_MAX_STREAMS,
    ReportFormatError,
    render_html,
    write_html,
)

ROOT = Path(__file__).parent.parent.parent
#: Attributes that make a browser fetch something (or navigate); only in-document and data: targets are allowed.
FETCHING = ("src", "href", "xlink:href", "srcset", "poster", "data", "action", "formaction")
VOID = {"meta", "link", "br", "img", "input", "hr", "col", "area", "base", "wbr", "source", "track", "embed"}


class Page(HTMLParser):
    """The parts of a page the tests read: elements with their attributes and the ids of their ancestors, the
    text of each summary cell, and the text of the whole page."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None], tuple[str, ...]]] = []
        self.stack: list[tuple[str, str | None]] = []
        self.rows: list[list[str]] = []
        self.row_classes: list[str] = []
        self.cell_classes: list[list[str]] = []
        self.text: list[str] = []
        self.facts: list[list[str]] = []  # the rows of the facts tables (not their nested tables): cell texts
        self._cell: list[str] | None = None
        self._fact: list[str] | None = None
        self._tables = 0  # how deep in tables
        self._outer = ""  # the class of the outermost table open
        self.feed(html)
        self.close()

    def ancestors(self) -> tuple[str, ...]:
        return tuple(i for _, i in self.stack if i)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.elements.append((tag, a, self.ancestors()))
        in_summary = "summary" in self.ancestors()
        if in_summary and tag == "tr":
            self.rows.append([])
            self.cell_classes.append([])
            self.row_classes.append(a.get("class") or "")
        if in_summary and tag in ("td", "th"):
            self._cell = []
            self.cell_classes[-1].append(a.get("class") or "")
        if tag == "table":
            self._tables += 1
            self._outer = self._outer if self._tables > 1 else a.get("class") or ""
        if self._tables == 1 and "facts" in self._outer:
            if tag == "tr":
                self.facts.append([])
            elif tag in ("td", "th"):
                self._fact = []
        if tag not in VOID:
            self.stack.append((tag, a.get("id")))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs), self.ancestors()))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        if tag in ("td", "th") and self._tables == 1 and self._fact is not None:
            self.facts[-1].append(" ".join(" ".join(self._fact).split()))
            self._fact = None
        self._tables -= tag == "table"
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._fact is not None:
            self._fact.append(data)

    def ids(self) -> list[str]:
        return [str(a["id"]) for _, a, _ in self.elements if a.get("id")]

    def row(self, metric: str) -> list[str]:
        (found,) = [r for r in self.rows if r and r[0] == metric]
        return found

    def fact(self, name: str) -> list[str]:
        """The facts row (Scenario, Impairment, Runs, Machine) named ``name``: its cells' texts."""
        (found,) = [r for r in self.facts if r and r[0] == name]
        return found


def render(report: dict[str, Any]) -> Page:
    return Page(render_html(report))


def test_a_compare_report_renders_every_section_with_inline_svg_plots(real_compare: RealRun) -> None:
    report = real_compare.report()
    page = Page(real_compare.html)
    ids = page.ids()
    assert set(IDS) <= set(ids)
    assert [i for i, n in Counter(ids).items() if n > 1] == [], "ids repeat (the SVGs' clip paths must be salted)"
    for plot in PLOTS:
        svgs = [a for tag, a, up in page.elements if tag == "svg" and plot in up]
        assert len(svgs) == 1, plot
        assert "viewbox" in svgs[0] and "width" not in svgs[0], "the SVG scales with the page"
        drawn = [tag for tag, _, up in page.elements if plot in up and tag in ("path", "use", "text")]
        assert len(drawn) > 20, f"{plot} draws almost nothing"
    # Each protocol's name is written in the plots (legends, titles) as text.
    text = "".join(page.text)
    for p in report["protocols"]:
        assert text.count(p) >= 4


def test_the_summary_table_holds_the_reports_rows_side_by_side(real_compare: RealRun) -> None:
    report = real_compare.report()
    page = Page(real_compare.html)
    assert page.rows[0] == ["metric", "unit", *report["protocols"]]
    assert page.rows[1] == ["result", "", "PASS", "PASS"]
    metrics = [r[0] for r in page.rows[2:]]
    assert metrics == [row["metric"] for row in report["summary"]]
    by_metric = {row["metric"]: row for row in report["summary"]}
    reconnects = by_metric["reconnects"]
    assert page.row("reconnects")[2:] == [f"{reconnects['sse']:,}", f"{reconnects['webtransport']:,}"]
    assert reconnects["sse"] > 0 and reconnects["webtransport"] > 0  # forced cuts; SSE's relay resets too
    streams = by_metric["streams completed"]
    assert page.row("streams completed")[2:] == ["12", "12"] == [f"{streams[p]}" for p in report["protocols"]]
    lag = by_metric["delivery lag p50"]
    assert page.row("delivery lag p50")[2:] == [f"{lag[p] * 1e3:.3g} ms" for p in report["protocols"]]
    # No server process was measured: its row shows n/a, not 0 or "None".
    assert page.row("server CPU-s per 100k tokens")[2:] == ["n/a", "n/a"]
    assert "None" not in "".join(page.text)


def test_lost_or_duplicated_tokens_are_highlighted_and_the_run_fails(real_compare: RealRun) -> None:
    clean = Page(real_compare.html)
    assert [c for c in clean.row_classes if "bad" in c] == []
    assert "FAIL" not in "".join(clean.text)
    report = real_compare.report()  # as if SSE had lost 3 tokens
    report["summary"] = [{**row, "sse": 3} if row["metric"] == "lost" else row for row in report["summary"]]
    report["runs"]["sse"]["correctness"]["lost"] = 3
    report["runs"]["sse"]["passed"] = report["passed"] = False
    page = render(report)
    i = next(k for k, r in enumerate(page.rows) if r[0] == "lost")
    assert page.rows[i][2:] == ["3", "0"]
    assert "bad" in page.row_classes[i]
    assert "bad" in page.cell_classes[i][2] and "bad" not in page.cell_classes[i][3]
    j = next(k for k, r in enumerate(page.rows) if r[0] == "duplicated")
    assert "bad" not in page.row_classes[j]
    assert "FAIL" in "".join(page.text)


def test_strings_from_the_run_are_escaped_everywhere() -> None:
    hostile = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
    report = compare_report(protocols=("sse", "x<i>$\\frac{1}{0}$&amp;"))
    report["scenario"]["url"] = hostile
    report["machine"]["hostname"] = hostile
    report["impairment_text"] = hostile
    report["runs"]["sse"]["streams"]["errors"] = {hostile: 3}
    report["summary"][0]["metric"] = hostile
    html = render_html(report)
    assert "<script" not in html
    assert "<img" not in html
    assert "<i>" not in html
    page = Page(html)
    text = "".join(page.text)
    assert text.count(hostile) >= 4  # the text survives, as text
    assert "x<i>$\\frac{1}{0}$&amp;" in text  # in the table and, not as mathtext, in the plots
    assert not [a for _, a, _ in page.elements if any(k.startswith("on") for k in a)]


def test_the_page_loads_nothing(real_compare: RealRun) -> None:
    page = Page(real_compare.html)
    for tag, attrs, _ in page.elements:
        for key in FETCHING:
            value = attrs.get(key)
            if value is not None:
                assert value.startswith(("#", "data:")), f"<{tag} {key}={value!r}> would load something"
        assert tag not in ("script", "iframe", "object", "embed", "img"), tag
    html = real_compare.html
    assert "@import" not in html
    assert "url(http" not in html.replace(" ", "")


@pytest.mark.parametrize(
    "case",
    [
        {"protocols": ("webtransport",)},
        {"protocols": ("sse",), "impairment": False},
        {"cut_rate": 0.0, "impairment": False},
        {"empty": True},
        {"streams": 3, "tokens": 2},
    ],
    ids=["one-protocol", "sse-unimpaired", "no-cuts", "empty-series", "tiny"],
)
def test_every_shape_of_run_renders(case: dict[str, Any]) -> None:
    report = compare_report(**case)
    page = render(report)
    assert set(IDS) <= set(page.ids())
    for plot in PLOTS:
        assert [tag for tag, _, up in page.elements if tag == "svg" and plot in up] == ["svg"]
    assert page.rows[0][2:] == list(report["protocols"])
    text = "".join(page.text)
    if case.get("empty"):
        assert "no data" in text and "no streams" in text and "no series" in text
    if case.get("impairment") is False:
        assert "No relay" in text
    if case.get("cut_rate") == 0.0:
        assert "cut (0)" in text and "reconnect (0)" in text


def test_a_failed_run_with_null_numbers_shows_n_a() -> None:
    report = compare_report(failed=5)
    run = report["runs"]["webtransport"]
    run.update(
        passed=False,
        error="ConnectionRefusedError: [Errno 111]",
        ttft_s={},
        recovery_s={},
        lag_cdf={"lag_s": [], "lateness_s": []},
        series={"interval_s": None, "t": [], "tokens": [], "tokens_per_s": [], "lag_p50_s": [], "lag_p99_s": []},
        events=[],
        relay=None,
    )
    for row in report["summary"]:
        row["webtransport"] = None
    report["passed"] = False
    page = render(report)
    assert page.rows[1][2:] == ["FAIL", "FAIL"]  # sse had 5 failed streams too
    for row in page.rows[2:]:
        assert row[3] == "n/a", row
    text = "".join(page.text)
    assert "ConnectionRefusedError: [Errno 111]" in text
    assert "failed stream" in text


def test_the_timeline_is_sampled_above_its_cap_with_a_note() -> None:
    few = render(compare_report(streams=TIMELINE_MAX_STREAMS))
    assert "drawn (every failed stream" not in "".join(few.text)
    many = compare_report(streams=TIMELINE_MAX_STREAMS * 3, tokens=5, failed=4)
    text = "".join(render(many).text)
    total = TIMELINE_MAX_STREAMS * 3
    for p in many["protocols"]:
        assert f"{p}: {TIMELINE_MAX_STREAMS} of {total} streams drawn (every failed stream" in text


def test_the_runs_notes_on_their_figures_are_shown_under_the_plots(real_compare: RealRun) -> None:
    report = real_compare.report()
    report["runs"]["sse"]["lag_cdf"]["note"] = "percentiles are the maximum over worker processes (upper bound)"
    report["runs"]["webtransport"]["series"]["note"] = "per-bucket lag <b>upper bound</b>"
    page = render(report)
    captions = [t for t in page.text if "upper bound" in t]
    assert "sse: percentiles are the maximum over worker processes (upper bound)" in "".join(captions)
    assert "".join(page.text).count("webtransport: per-bucket lag <b>upper bound</b>") == 2  # lag/time, tokens


def test_write_html_writes_the_page_the_cli_wrote(real_compare: RealRun, tmp_path: Path) -> None:
    """``--report`` renders exactly the report ``--json`` holds: the JSON keeps every figure the page shows."""
    report = real_compare.report()
    out = tmp_path / "report.html"
    write_html(report, out)
    assert out.read_text(encoding="utf-8") == render_html(report) == real_compare.html


def test_each_run_shows_the_relay_its_protocol_went_through(real_compare: RealRun) -> None:
    """SSE went through the TCP relay, WebTransport through the UDP one: each column shows its own relay's
    counters, not the other relay's zeros."""
    report = real_compare.report()
    page = Page(real_compare.html)
    assert page.fact("")[1:] == report["protocols"] == ["sse", "webtransport"]
    _, sse, wt = page.fact("relay")
    tcp, udp = report["runs"]["sse"]["relay"]["tcp"], report["runs"]["webtransport"]["relay"]["udp"]
    assert sse.startswith("via TCP relay") and wt.startswith("via UDP relay")
    assert f"connections {tcp['connections']:,}" in sse and f"handshakes {tcp['handshakes']:,}" in sse
    assert tcp["handshakes"] == tcp["connections"] > 12  # every connection paid its handshake; cuts reconnect
    assert f"datagrams_down {udp['datagrams_down']:,}" in wt and udp["datagrams_down"] > 0
    assert "datagrams" not in sse and "stalls" not in wt and "handshakes" not in wt
    assert re.search(r"handshake_seconds [\d.,]+ (µs|ms|s) ", sse), sse  # a duration, in its unit
    assert not [r for r in page.facts if r[0].startswith("relay ")]
    # A protocol the page does not know: every relay, by name.
    other = render(compare_report(protocols=("sse", "quic")))
    assert other.fact("relay")[1].startswith("via TCP relay") and other.fact("relay")[2] == "n/a"
    assert other.fact("relay tcp")[2].startswith("connections") and other.fact("relay udp")[2]


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ([], "a compare report is a dict, not list"),
        ({"streams": {}}, "not a compare report: kind None version None"),
        ({"kind": "tokenwire-loadtest-compare", "version": 2}, "version 2"),
        ({"kind": "tokenwire-loadtest-compare", "version": 1, "runs": []}, "'runs'"),
    ],
)
def test_what_is_not_a_compare_report_is_refused(bad: Any, words: str) -> None:
    with pytest.raises(ReportFormatError, match=words.replace("(", r"\(")) as e:
        render_html(bad)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("module", ["matplotlib", "jinja2"])
def test_without_the_report_extra_the_import_says_what_to_install(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tokenwire loadtest --report` imports the module before its run: a ModuleNotFoundError naming the missing
    module and the extra to install."""
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    monkeypatch.delitem(sys.modules, "tokenwire.loadtest.html")  # restored after the test
    with pytest.raises(ModuleNotFoundError) as e:
        importlib.import_module("tokenwire.loadtest.html")
    assert e.value.name == module
    assert str(e.value) == f"the HTML report needs {module}: {INSTALL_HINT}"


def test_the_template_is_package_data() -> None:
    template = importlib.resources.files("tokenwire.loadtest") / "templates" / "report.html.j2"
    assert template.is_file()
    assert 'id="summary"' in template.read_text(encoding="utf-8")


MATURIN = shutil.which("maturin", path=str(Path(sys.executable).parent)) or shutil.which("maturin")


@pytest.mark.skipif(MATURIN is None, reason="maturin is not installed (pip install -e '.[dev]')")
@pytest.mark.timeout(300)
def test_the_sdist_carries_the_template(tmp_path: Path) -> None:
    """maturin packs python/tokenwire whole (python-source = "python"): the template goes with the module, in the
    sdist as in a wheel."""
    assert MATURIN is not None
    subprocess.run([MATURIN, "sdist", "--out", str(tmp_path)], cwd=ROOT, check=True, capture_output=True)  # noqa: S603
    (archive,) = tmp_path.glob("tokenwire-*.tar.gz")
    with tarfile.open(archive) as tar:
        prefix = archive.name.removesuffix(".tar.gz")
        member = tar.getmember(f"{prefix}/python/tokenwire/loadtest/templates/report.html.j2")
        extracted = tar.extractfile(member)
        assert extracted is not None
        assert extracted.read() == (ROOT / "python/tokenwire/loadtest/templates/report.html.j2").read_bytes()


def test_the_docs_python_example_renders_a_saved_report(real_compare: RealRun, tmp_path: Path) -> None:
    """docs/loadtest-report.md's Python block, run as written next to a saved compare.json."""
    (block,) = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "loadtest-report.md").read_text(), flags=re.DOTALL)
    report = real_compare.report()
    shutil.copy(real_compare.json_path, tmp_path / "compare.json")
    proc = subprocess.run(  # noqa: S603 - runs our own docs
        [sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "compare.html").read_text(encoding="utf-8") == render_html(report)
