"""An independent, incremental SSE parser written from the WHATWG HTML specification.

It follows "9.2.6 Interpreting an event stream" step by step and knows nothing of tokenwire: tests feed
it what tokenwire writes, so an encoder bug cannot hide behind a parser written from the same notes.

* The stream is decoded as UTF-8 (invalid sequences become U+FFFD); one leading BOM is dropped.
* Lines end with CRLF, a lone LF or a lone CR. A CR at the end of one chunk and an LF at the start of the
  next are one line end; a UTF-8 sequence split across chunks decodes as one character.
* A line starting with ``:`` is a comment (kept in :attr:`SpecParser.comments`, text after the colon).
* Otherwise the line splits at its first ``:`` into field and value; one leading space of the value is
  dropped; a line without ``:`` is a field with an empty value.
* ``event`` sets the event type buffer; ``data`` appends the value and LF to the data buffer; ``id`` sets
  the last event id buffer unless the value holds NUL; ``retry`` sets the reconnection time only if the
  value is ASCII digits. Other fields are ignored.
* A blank line dispatches: with an empty data buffer the data and type buffers are reset and nothing is
  dispatched; otherwise one trailing LF is removed from the data, the type defaults to ``message``, and an
  event is produced. The last event id persists across events.
* At the end of the stream (:meth:`SpecParser.close`) an incomplete event is discarded.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

__all__ = ["Event", "SpecParser", "parse"]

_LINE_END = re.compile(r"[\r\n]")


@dataclass(frozen=True)
class Event:
    """One dispatched ``MessageEvent``: its type, data and ``lastEventId``."""

    type: str
    data: str
    last_event_id: str


@dataclass
class SpecParser:
    """Feed bytes in any split; every call returns the events completed by that chunk."""

    retry: int | None = None
    """The reconnection time (ms) last set by a valid ``retry`` field, ``None`` if never."""
    comments: list[str] = field(default_factory=list)
    """Every comment line, without its leading colon, in order."""
    last_event_id: str = ""
    """The last event id buffer."""

    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"), init=False, repr=False
    )
    _bom_checked: bool = field(default=False, init=False, repr=False)
    _pending_cr: bool = field(default=False, init=False, repr=False)
    _partial: list[str] = field(default_factory=list, init=False, repr=False)
    _data: list[str] = field(default_factory=list, init=False, repr=False)
    _type: str = field(default="", init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)

    def feed(self, chunk: bytes) -> list[Event]:
        if self._closed:
            raise RuntimeError("feed() after close()")
        return self._feed_text(self._decoder.decode(chunk, final=False))

    def close(self) -> list[Event]:
        """End of stream: flush the decoder; a trailing incomplete line or event is discarded."""
        events = self._feed_text(self._decoder.decode(b"", final=True))
        self._closed = True
        self._partial.clear()
        self._data.clear()
        self._type = ""
        return events

    # -- internals -----------------------------------------------------------------------------------

    def _feed_text(self, text: str) -> list[Event]:
        if not text:
            return []
        if not self._bom_checked:
            self._bom_checked = True
            if text[0] == "\ufeff":
                text = text[1:]
                if not text:
                    return []
        events: list[Event] = []
        pos = 0
        if self._pending_cr:
            self._pending_cr = False
            if text[0] == "\n":
                pos = 1  # second half of a CRLF split across chunks
        n = len(text)
        for m in _LINE_END.finditer(text, pos):
            i = m.start()
            if i < pos:
                continue  # the LF of a CRLF already consumed
            if self._partial:
                self._partial.append(text[pos:i])
                line = "".join(self._partial)
                self._partial.clear()
            else:
                line = text[pos:i]
            if text[i] == "\r":
                if i + 1 < n:
                    pos = i + 2 if text[i + 1] == "\n" else i + 1
                else:
                    self._pending_cr = True
                    pos = i + 1
            else:
                pos = i + 1
            event = self._line(line)
            if event is not None:
                events.append(event)
        if pos < n:
            self._partial.append(text[pos:])
        return events

    def _line(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line[0] == ":":
            self.comments.append(line[1:])
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
            self._data.append("\n")
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry" and value and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        data = "".join(self._data)
        event_type = self._type
        self._data.clear()
        self._type = ""
        if data == "":
            return None
        data = data.removesuffix("\n")
        return Event(type=event_type or "message", data=data, last_event_id=self.last_event_id)


def parse(stream: bytes) -> tuple[list[Event], SpecParser]:
    """Parse a whole stream; returns the events and the parser (for ``retry`` and ``comments``)."""
    parser = SpecParser()
    events = parser.feed(stream)
    events += parser.close()
    return events, parser
