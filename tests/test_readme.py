"""Every ``python`` code block of the README runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_readme_python_blocks_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks
    for block in blocks:
        proc = subprocess.run(  # noqa: S603 - runs our own README
            [sys.executable, "-c", block], capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert "end: {'reason': 'length'" in proc.stdout


ROOT = README.parent
DOCS = (README, ROOT / "BENCHMARKS.md")


def _documented_commands() -> tuple[set[str], set[str]]:
    """``python -m X`` modules and ``tokenwire <sub>`` subcommands quoted in README.md and BENCHMARKS.md: in code
    spans, fenced blocks (not python ones) and indented code lines."""
    modules: set[str] = set()
    subcommands: set[str] = set()
    for doc in DOCS:
        text = re.sub(r"```py(?:thon)?\n.*?```", "", doc.read_text(), flags=re.DOTALL)
        modules |= set(re.findall(r"python -m ([A-Za-z_][\w.]*)", text))
        code = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL)
        code += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
        code += re.findall(r"^ {4,}(\S.*)$", text, flags=re.MULTILINE)
        for snippet in code:
            subcommands |= set(re.findall(r"(?:^|[\s(=])tokenwire ([a-z][a-z-]*)(?=\s|$)", snippet, flags=re.MULTILINE))
    return modules, subcommands


def test_every_documented_command_parses_its_help() -> None:
    """After ``make install`` (the README's ``make serve``/``make check``), every command README.md and
    BENCHMARKS.md quote starts: it imports and answers ``--help``."""
    modules, subcommands = _documented_commands()
    assert {"benches.sse_compare", "benches.wt_compare", "pytest"} <= modules, modules
    assert {"serve", "loadtest"} <= subcommands, subcommands
    commands = [["-m", m, "--help"] for m in sorted(modules)]
    commands += [["-m", "tokenwire", sub, "--help"] for sub in sorted(subcommands)]
    for args in commands:
        proc = subprocess.run(  # noqa: S603 - runs our own commands
            [sys.executable, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
        )
        assert proc.returncode == 0 and "usage:" in proc.stdout, (args, proc.stderr[-2000:])


def test_every_bench_module_imports() -> None:
    """What the benchmark commands start in subprocesses (the peer servers: aiohttp, sse-starlette, aioquic)
    is installed by the test extras: each module under benches/ imports."""
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in (ROOT / "benches").rglob("*.py")
        if p.name != "__init__.py"
    )
    assert "benches.peers.aiohttp_app" in modules
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    proc = subprocess.run(  # noqa: S603 - imports our own modules
        [sys.executable, "-c", code, *modules], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
