"""Text from outside made valid before it is used anywhere.

Contract: every string that enters moac from outside (a provider's answer or error body, a
prompts file, a command-line argument, standard input) passes through one of these before it
reaches a request body, a trace, a cache, an answers file or a terminal, so that each of
those can be encoded as UTF-8 without a second thought:

- :func:`valid_text`: each lone surrogate (U+D800..U+DFFF, which JSON's ``"\\ud800"`` escape
  and Python's ``surrogateescape`` produce, and UTF-8 cannot encode) becomes U+FFFD.
- :func:`valid_json`: the same for every string (keys too) inside a parsed JSON value,
  iteratively, so a deeply nested value costs no recursion.
- :func:`from_bytes`: bytes decoded as UTF-8, invalid sequences as U+FFFD.
- :func:`from_argv`: an argument as the shell gave it, its undecodable bytes (which Python
  keeps as surrogates) as U+FFFD.
- :func:`json_bytes`: JSON as UTF-8 bytes that never fails on a stray surrogate.

Each is linear in its input and returns the very object it was given when nothing needed
repair, so the common case allocates nothing but the check.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (see the module docstring)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub(REPLACEMENT, text)
    return text


def needs_repair(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (cannot be encoded as UTF-8)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def valid_json(value: Any) -> Any:
    """A parsed JSON value with every string in it made valid; the same object back when no
    string needed repair. Dicts and lists are repaired in place."""
    if isinstance(value, str):
        return valid_text(value)
    if not isinstance(value, (dict, list)):
        return value
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in list(node):
                item = node[key]
                if isinstance(item, str):
                    item = valid_text(item)
                elif isinstance(item, (dict, list)):
                    stack.append(item)
                if isinstance(key, str) and needs_repair(key):
                    del node[key]
                    node[valid_text(key)] = item
                else:
                    node[key] = item
        else:
            for index, item in enumerate(node):
                if isinstance(item, str):
                    node[index] = valid_text(item)
                elif isinstance(item, (dict, list)):
                    stack.append(item)
    return value


def from_bytes(data: bytes) -> str:
    """UTF-8 bytes as text, each invalid sequence as U+FFFD."""
    return data.decode("utf-8", errors="replace")


def from_argv(argument: str) -> str:
    """A command-line argument as text: bytes the locale could not decode (kept by Python as
    surrogates, ``surrogateescape``) become U+FFFD rather than an encoding error later."""
    if not needs_repair(argument):
        return argument
    try:
        return from_bytes(os.fsencode(argument))
    except UnicodeError:
        return valid_text(argument)


def json_bytes(value: Any, **dumps: Any) -> bytes:
    """``value`` as UTF-8 JSON (``ensure_ascii=False``, other :func:`json.dumps` options as
    given). A string that cannot be encoded, wherever it hid, is repaired on a copy rather
    than failing the write: the last line of defence of every file and body moac writes."""
    text = json.dumps(value, ensure_ascii=False, **dumps)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return valid_text(text).encode("utf-8")


def dollars(amount: float) -> str:
    """Dollars for people: four places, more for amounts under a cent so that they never
    read as $0.0000 (``$0.000040``), and no "$-0.0000" from a float's rounding residue."""
    if abs(amount) < 5e-13:
        return "$0.0000"
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    places = 4 if amount >= 0.001 else min(12, 1 - math.floor(math.log10(amount)) + 1)
    return f"{sign}${amount:.{places}f}"
