"""An incremental decoder of server-sent events, fed raw bytes as they arrive.

Contract (the WHATWG event-stream rules, narrowed to what OpenAI-compatible servers send):

- Lines end at LF, CR or CRLF *bytes*; a CRLF split across two chunks is one line end.
  Never ``str.splitlines()``: it also breaks at U+2028, U+0085 and friends, which JSON
  strings may carry raw.
- Each complete line is decoded as UTF-8 on its own (a multi-byte character split across
  chunks is whole by then); invalid bytes become U+FFFD rather than an exception.
- A line starting with ``:`` is a comment (servers send them as keep-alives).
- ``field: value`` sets a field; one space after the colon is dropped. ``data`` lines
  accumulate, joined by ``"\\n"``; ``event``, ``id`` and ``retry`` are kept as the spec says.
- A blank line ends an event; an event without data is dropped.
- An event whose data is exactly ``[DONE]`` ends the stream: it is not returned,
  :attr:`SSEDecoder.done` becomes true and later bytes are ignored.
- At end of input (:meth:`SSEDecoder.close`), a final event whose lines were complete but
  whose blank line never came is still returned (servers that just close); an unterminated
  last line is a cut-off and is dropped.

Feeding the same bytes in any chunking gives the same events (a hypothesis test checks it).
A line longer than ``max_line_bytes`` raises :class:`LineTooLong`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from moac.providers.constants import MAX_SSE_LINE_BYTES

_EOL = re.compile(rb"\r\n|\r|\n")
_DONE = "[DONE]"


@dataclass(frozen=True, slots=True)
class Event:
    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None


class LineTooLong(ValueError):
    """A line went past the decoder's limit without ending."""


class SSEDecoder:
    __slots__ = ("_buf", "_skip_lf", "_data", "_event", "_id", "_retry", "done", "_started",
                 "_closed", "max_line_bytes")

    def __init__(self, max_line_bytes: int = MAX_SSE_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._buf = b""          # bytes of the line not yet terminated
        self._skip_lf = False    # the last chunk ended with CR: a leading LF is its CRLF's half
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None
        self._started = False    # a BOM is stripped from the first line only
        self.done = False        # a [DONE] event was seen
        self._closed = False

    def feed(self, chunk: bytes) -> list[Event]:
        """Events completed by ``chunk``, in order."""
        if self.done or self._closed or not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
                if not chunk:
                    return []
        buf = self._buf + chunk if self._buf else chunk
        events: list[Event] = []
        pos, end = 0, len(buf)
        while not self.done:
            match = _EOL.search(buf, pos)
            if match is None:
                break
            line = buf[pos:match.start()]
            pos = match.end()
            if pos == end and buf[pos - 1] == 0x0D:  # a CR ending the chunk may be half a CRLF
                self._skip_lf = True
            self._line(line, events)
        self._buf = b"" if self.done else buf[pos:]
        if len(self._buf) > self.max_line_bytes:
            raise LineTooLong(f"a server-sent-events line passed {self.max_line_bytes} bytes")
        return events

    def close(self) -> list[Event]:
        """End of input: the pending event, if its lines were complete (see the module
        docstring). Later input is ignored; :attr:`done` still says whether [DONE] came."""
        self._buf = b""
        events: list[Event] = []
        if not self.done and not self._closed:
            self._dispatch(events)
        self._closed = True
        return events

    def _line(self, raw: bytes, events: list[Event]) -> None:
        if not raw:
            self._dispatch(events)
            return
        line = raw.decode("utf-8", errors="replace")
        if not self._started:
            self._started = True
            if line.startswith("\ufeff"):
                line = line[1:]
        if line.startswith(":"):
            return
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\x00" not in value:
                self._id = value
        elif field == "retry":
            if value.isascii() and value.isdigit():
                self._retry = int(value)
        # Other fields are ignored, as the spec says.

    def _dispatch(self, events: list[Event]) -> None:
        self._started = True
        if not self._data:
            self._event = None
            return
        data = "\n".join(self._data)
        self._data = []
        event, self._event = self._event, None
        if data == _DONE:
            self.done = True
            return
        events.append(Event(data, event, self._id, self._retry))
