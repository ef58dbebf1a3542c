"""The server-sent-events decoder: line ends, UTF-8, fields, [DONE], and chunking invariance."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moac.providers.sse import Event, LineTooLong, SSEDecoder


def decode(*chunks: bytes, close: bool = True) -> tuple[list[Event], bool]:
    decoder = SSEDecoder()
    events = [e for chunk in chunks for e in decoder.feed(chunk)]
    if close:
        events += decoder.close()
    return events, decoder.done


def datas(*chunks: bytes) -> list[str]:
    return [e.data for e in decode(*chunks)[0]]


def test_basic_events_and_done():
    events, done = decode(b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\ndata: late\n\n',
                          close=False)
    assert [e.data for e in events] == ['{"a": 1}', '{"b": 2}']
    assert done


def test_line_ends_lf_cr_crlf_and_mixed():
    for eol in (b"\n", b"\r", b"\r\n"):
        assert datas(b"data: x" + eol + eol + b"data: y" + eol + eol) == ["x", "y"]
    assert datas(b"data: x\r\n\ndata: y\r\rdata: z\n\r\n") == ["x", "y", "z"]


def test_crlf_split_across_chunks_is_one_line_end():
    # Were the LF taken for a second line end, the blank line would end the event early.
    assert datas(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == ["a\nb"]


def test_multibyte_character_split_across_chunks():
    raw = 'data: {"t": "日本語🙂"}\n\n'.encode()
    chunks = [raw[i:i + 1] for i in range(len(raw))]
    assert datas(*chunks) == ['{"t": "日本語🙂"}']


def test_u2028_inside_json_does_not_split_a_line():
    raw = 'data: {"t": "a\u2028b\u2029c\x85d"}\n\n'.encode()
    assert datas(raw) == ['{"t": "a\u2028b\u2029c\x85d"}']


def test_comments_are_keepalives():
    assert datas(b": ping\n\n:\ndata: x\n: mid-event comment\n\n") == ["x"]


def test_data_lines_join_with_newline_and_one_space_is_stripped():
    assert datas(b"data: a\ndata:b\ndata:  c\ndata\n\n") == ["a\nb\n c\n"]


def test_event_id_retry_fields():
    (event,), _ = decode(b"event: error\nid: 7\nretry: 1500\nretry: x\ndata: boom\n\n")
    assert event == Event("boom", "error", "7", 1500)
    # The id persists; the event type does not.
    (first, second), _ = decode(b"id: 1\nevent: e\ndata: a\n\ndata: b\n\n")
    assert (second.id, second.event) == ("1", None)


def test_event_without_data_is_dropped():
    assert datas(b"event: ping\n\n\n\ndata: x\n\n") == ["x"]


def test_bom_is_stripped_from_the_first_line_only():
    assert datas("\ufeffdata: x\n\n".encode()) == ["x"]
    assert datas(b"data: x\n\n" + "\ufeffdata: y\n\n".encode()) == ["x"]  # not a data field


def test_invalid_utf8_becomes_replacement_character():
    assert datas(b"data: a\xffb\n\n") == ["a\ufffdb"]


def test_close_returns_a_complete_pending_event_but_drops_a_cut_line():
    assert datas(b"data: x\n") == ["x"]          # server closed without the blank line
    assert datas(b'data: {"cut') == []          # unterminated: a cut-off
    assert datas(b"data: x\ndata: {\"cu") == ["x"]


def test_done_without_blank_line_at_eof():
    # A complete "data: [DONE]" line at end of input still ends the stream.
    assert decode(b"data: x\n\ndata: [DONE]\n")[1]
    assert not decode(b"data: x\n\ndata: [DON")[1]
    assert not decode(b"data: x\n\n")[1]


def test_done_stops_decoding_midway_through_a_chunk():
    decoder = SSEDecoder()
    assert [e.data for e in decoder.feed(b"data: a\n\ndata: [DONE]\n\ndata: b\n\n")] == ["a"]
    assert decoder.done
    assert decoder.feed(b"data: c\n\n") == []


def test_a_line_that_never_ends_is_refused():
    decoder = SSEDecoder(max_line_bytes=64)
    assert decoder.feed(b"data: " + b"x" * 50 + b"\n\n")[0].data == "x" * 50
    decoder.feed(b"data: " + b"y" * 50)
    with pytest.raises(LineTooLong):
        decoder.feed(b"y" * 20)


# --- chunking invariance -----------------------------------------------------------------

_values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                  max_size=12) | st.sampled_from(["日本語", "🙂", "a\u2028b", "[DONE]", " x", ""])
_eols = st.sampled_from(["\n", "\r", "\r\n"])


@st.composite
def streams(draw) -> bytes:
    """Event streams with any line ends, comments, fields, and a [DONE] now and then."""
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["data", "data", "data", "comment", "event", "id",
                                     "blank", "blank", "bare"]))
        value = draw(_values)
        eol = draw(_eols)
        if kind == "comment":
            lines.append(":" + value + eol)
        elif kind == "blank":
            lines.append(eol)
        elif kind == "bare":
            lines.append("data" + eol)
        else:
            sep = draw(st.sampled_from([": ", ":", ":  "]))
            lines.append(kind + sep + value + eol)
    tail = draw(st.sampled_from(["", "data: cut", "data: [DONE]", "\r"]))
    return ("".join(lines) + tail).encode()


@st.composite
def chunkings(draw, data: bytes) -> list[bytes]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=len(data) + 1))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_chunking_gives_the_same_events_as_the_whole(data):
    raw = data.draw(streams())
    chunks = data.draw(chunkings(raw))
    assert decode(*chunks) == decode(raw)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_byte_at_a_time_equals_whole(data):
    raw = data.draw(streams())
    assert decode(*[raw[i:i + 1] for i in range(len(raw))]) == decode(raw)
