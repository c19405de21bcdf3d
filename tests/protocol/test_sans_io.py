"""``tokenwire.protocol`` is sans-I/O: it never imports an event loop, sockets, selectors or a clock, nor a QUIC
engine, nor the layers above it (servers, clients, the hub)."""

from __future__ import annotations

import ast
from pathlib import Path

import tokenwire.protocol

BANNED = {"asyncio", "socket", "selectors", "time", "uvloop", "ssl", "threading", "aioquic"}
#: What ``tokenwire.protocol`` may import of tokenwire itself: the Rust core, the errors, and itself.
ALLOWED_TOKENWIRE = ("tokenwire._core", "tokenwire.errors", "tokenwire.protocol")


def test_protocol_package_imports_no_io() -> None:
    root = Path(tokenwire.protocol.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert files
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in BANNED, f"{path.name} imports {name}"
                if name == "tokenwire" and isinstance(node, ast.ImportFrom):
                    names_from = [f"tokenwire.{a.name}" for a in node.names]
                else:
                    names_from = [name] if name.startswith("tokenwire.") else []
                for module in names_from:
                    assert module.startswith(ALLOWED_TOKENWIRE), f"{path.name} imports {module} (an upper layer)"
