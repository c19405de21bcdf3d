"""The JSON object of a request body, checked once for every transport (HTTP bodies, WebTransport requests).

A body is refused, with :class:`~tokenwire.errors.InvalidBody` (400) naming the member at fault, when it is
not UTF-8 JSON, is not an object, nests deeper than :data:`MAX_JSON_DEPTH`, or holds a string that is not
Unicode text: JSON's ``\\ud800`` escapes can spell a lone surrogate, which no UTF-8 encoder accepts, so such
a string would fail later, wherever it is echoed or rendered (a model name in every OpenAI chunk, a prompt
in the model). Nothing past this check needs to care.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from tokenwire.errors import InvalidBody

__all__ = ["MAX_JSON_DEPTH", "bool_field", "float_field", "int_field", "loads_object"]

#: Containers nested deeper than this are refused (the request bodies tokenwire reads nest 3 deep).
MAX_JSON_DEPTH = 64

# A lone surrogate reaches a decoded string only through a \uD800-\uDFFF escape (the strict UTF-8 decoder
# refuses encoded surrogates), so a body without one needs no string walk. (A match may be an escaped backslash
# followed by "ud8..": the walk then finds nothing.)
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads_object(data: bytes, what: str = "request body") -> dict[str, Any]:
    """The JSON object of ``data`` (empty: ``null``, refused). ``InvalidBody`` (400) otherwise; its ``field``
    names the member at fault (``""``: the body as a whole)."""
    try:
        # Decoded here, strictly: json.loads(bytes) would let encoded surrogates (ED A0 80) through.
        parsed = json.loads(data.decode("utf-8") if data else "null")
    except RecursionError:
        raise InvalidBody(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:  # also the int parser's 4300-digit limit
        raise InvalidBody(f"{what} is not UTF-8 JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise InvalidBody(f"{what} must be a JSON object")
    strings = _SURROGATE_ESCAPE.search(data) is not None
    if strings or data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH:
        _walk(parsed, strings, what)
    return parsed


def _walk(root: dict[str, Any], strings: bool, what: str) -> None:
    """Depth first, without recursion: refuse a level past ``MAX_JSON_DEPTH`` and (with ``strings``) any key or
    string holding a surrogate."""
    stack: list[tuple[Any, str, int]] = [(root, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InvalidBody(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels", path)
        items = node.items() if type(node) is dict else enumerate(node)
        for key, value in items:
            if type(key) is str:
                if strings and _SURROGATE.search(key):
                    where = f"a key of {path!r}" if path else "a key of the body"
                    raise InvalidBody(f"{what}: {where} is not Unicode text (a lone surrogate)", _escape(key, path))
                child = f"{path}.{key}" if path else key
            else:
                child = f"{path}[{key}]"
            kind = type(value)
            if kind is str:
                if strings and _SURROGATE.search(value):
                    raise InvalidBody(f"{child!r} is not Unicode text (it holds a lone surrogate)", child)
            elif kind is dict or kind is list:
                stack.append((value, child, depth + 1))


def _escape(key: str, path: str) -> str:
    text = key.encode("utf-8", "backslashreplace").decode()
    return f"{path}.{text}" if path else text


# -- members of a request body (InvalidBody names the one at fault) -------------------------------------


def int_field(body: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidBody(f"{name!r} must be an integer from {lo} to {hi}", name)
    return value


def float_field(body: Mapping[str, Any], name: str, lo: float, hi: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidBody(f"{name!r} must be a number", name)
    if not lo <= value <= hi:
        raise InvalidBody(f"{name!r} must be from {lo} to {hi}", name)
    return float(value)


def bool_field(body: Mapping[str, Any], name: str, default: bool = False) -> bool:
    """``body[name]``, which must be a JSON boolean (or null / absent: ``default``)."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidBody(f"{name!r} must be a boolean (true or false)", name)
    return value
