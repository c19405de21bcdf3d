"""The browser files travel inside the Python package: ``python/tokenwire/web/`` links to the ``js/`` sources,
and maturin's builds carry the files themselves (so ``pip install`` needs no Node)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import tokenwire

ROOT = Path(__file__).parent.parent
FILES = {"client.js": ROOT / "js" / "src" / "client.js", "index.html": ROOT / "js" / "demo" / "index.html"}
MATURIN = shutil.which("maturin", path=str(Path(sys.executable).parent)) or shutil.which("maturin")


def test_the_package_links_its_browser_files_to_the_js_sources() -> None:
    for name, source in FILES.items():
        link = ROOT / "python" / "tokenwire" / "web" / name
        assert link.is_symlink(), f"{link} must stay a link to {source} (one source of truth)"
        assert link.resolve() == source.resolve()


@pytest.mark.skipif(MATURIN is None, reason="maturin is not installed (pip install -e '.[dev]')")
@pytest.mark.timeout(300)
def test_an_sdist_carries_the_files_not_the_links(tmp_path: Path) -> None:
    """maturin follows the links: the archive holds each file's bytes (a wheel build walks the same tree)."""
    assert MATURIN is not None
    subprocess.run([MATURIN, "sdist", "--out", str(tmp_path)], cwd=ROOT, check=True, capture_output=True)  # noqa: S603
    (archive,) = tmp_path.glob("tokenwire-*.tar.gz")
    with tarfile.open(archive) as tar:
        for name, source in FILES.items():
            member = tar.getmember(f"{archive.name.removesuffix('.tar.gz')}/python/tokenwire/web/{name}")
            assert member.isfile()
            extracted = tar.extractfile(member)
            assert extracted is not None and extracted.read() == source.read_bytes()
        # every module of the package travels too (subpackages such as ``loadtest/relays/`` included)
        top = archive.name.removesuffix(".tar.gz")
        modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "python" / "tokenwire").rglob("*.py")}
        assert "python/tokenwire/loadtest/relays/__init__.py" in modules
        assert modules <= {name.removeprefix(f"{top}/") for name in tar.getnames()}
    assert tokenwire.__version__ in archive.name
