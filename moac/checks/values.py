"""Typed reading of setting values: units, ranges, names and environment variables.

Every reader returns the value in moac's base unit (seconds, tokens, billions of
parameters, dollars per million tokens) or None after reporting what is wrong. Every number
it returns is finite, never -0.0, and within its kind's range (:data:`KIND_LIMITS`, from
:mod:`moac.constants`); a reader may narrow the range further.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

from moac import constants
from moac.lang import ast
from moac.checks.state import CheckState, suggest
from moac.lang.diagnostics import Span

# Each kind of quantity: the units it takes and their factor to the base unit.
# `k` counts tokens in 1,024s (context windows are powers of two: 32k = 32,768).
UNITS: dict[str, dict[str, float]] = {
    "duration": {"s": 1.0, "ms": 0.001, "min": 60.0},
    "tokens": {"": 1.0, "tok": 1.0, "tokens": 1.0, "k": 1024.0, "K": 1024.0,
               "M": 1024.0 * 1024.0},
    "params": {"B": 1.0, "M": 0.001, "T": 1000.0},
    "rate": {"tok/s": 1.0},
    "tflops": {"": 1.0, "TFLOPs": 1.0, "TFLOP": 1.0},
    "number": {"": 1.0},
    "percent": {"": 1.0, "%": 1.0},
    "fraction": {"": 1.0, "%": 0.01},
}
KIND_WORDS = {
    "duration": "a duration (e.g. 30s, 500ms)",
    "tokens": "a token count (e.g. 512, 32k, 400 tok)",
    "params": "a parameter count (e.g. 111B, 135M)",
    "rate": "a rate in tok/s (e.g. 35 tok/s)",
    "tflops": "TFLOPs (e.g. 500 TFLOPs)",
    "number": "a plain number",
    "percent": "a score from 0 to 100",
    "fraction": "a fraction (0.8 or 80%)",
    "usd": "dollars (e.g. $0.05)",
    "price": "a price per million tokens (e.g. $0.90/M)",
}
ALL_UNITS = sorted({u for table in UNITS.values() for u in table if u} | {"/M"})
# The largest value of each kind, in its base unit, and how it is written in a message.
KIND_LIMITS: dict[str, tuple[float, str]] = {
    "duration": (constants.MAX_DURATION_S, f"{constants.MAX_DURATION_S:,.0f}s (a week)"),
    "tokens": (constants.MAX_TOKEN_COUNT, f"{constants.MAX_TOKEN_COUNT:,} tokens"),
    "params": (constants.MAX_PARAMS_B, f"{constants.MAX_PARAMS_B:,.0f}B"),
    "rate": (constants.MAX_TOKENS_PER_S, f"{constants.MAX_TOKENS_PER_S:,.0f} tok/s"),
    "tflops": (constants.MAX_TFLOPS, f"{constants.MAX_TFLOPS:,.0f} TFLOPs"),
    "usd": (constants.MAX_AMOUNT_USD, f"${constants.MAX_AMOUNT_USD:,.0f}"),
    "price": (constants.MAX_AMOUNT_USD, f"${constants.MAX_AMOUNT_USD:,.0f}/M"),
}


@dataclass
class Reader:
    """Reads the values of one file's settings, reporting problems against that file."""

    state: CheckState
    path: str

    def report(self, code: str, message: str, span: Span | None, hint: str | None = None,
               *, redact: bool = False):
        self.state.report(code, message, self.path, span, hint, redact=redact)

    # --- settings lists --------------------------------------------------------------

    def settings(self, settings: Iterable[ast.Setting], known: Iterable[str], what: str
                 ) -> dict[str, ast.Setting]:
        """Index settings by key; report unknown keys (with a suggestion) and repeats."""
        known = list(known)
        seen: dict[str, ast.Setting] = {}
        for setting in settings:
            key = setting.key.name
            if key not in known:
                self.report("E201", f"unknown setting '{key}' in {what}", setting.key.span,
                            hint=suggest(key, known) or "known settings: " + ", ".join(known))
                continue
            if key in seen:
                self.report("E205", f"'{key}' is set twice in {what} (first on line "
                            f"{seen[key].span.line})", setting.key.span)
                continue
            seen[key] = setting
        return seen

    def single(self, setting: ast.Setting) -> ast.Value | None:
        if len(setting.values) != 1:
            self.report("E207", f"'{setting.key.name}' takes one value, not "
                        f"{len(setting.values)}", setting.span)
            return None
        return setting.values[0]

    # --- scalars -----------------------------------------------------------------------

    def quantity(self, value: ast.Value, kind: str, key: str, *, allow_tag: bool = False
                 ) -> float | None:
        if not isinstance(value, ast.Quantity):
            self.report("E202", f"'{key}' takes {KIND_WORDS[kind]}, not {describe(value)}",
                        value.span)
            return None
        if value.tag is not None and not allow_tag:
            self.report("E202", f"unexpected word '{value.tag.name}' after the value of "
                        f"'{key}'", value.tag.span)
            return None
        if kind in ("usd", "price"):
            wanted = "" if kind == "usd" else "/M"
            if not value.dollars or value.unit != wanted:
                self.report("E203", f"'{key}' takes {KIND_WORDS[kind]}, not "
                            f"'{_shown(value)}'", value.span, hint=_unit_hint(value, kind))
                return None
            return self._in_kind(value.value, kind, key, value)
        table = UNITS[kind]
        if value.dollars or value.unit not in table:
            if not value.dollars and value.unit and value.unit not in ALL_UNITS:
                message = f"unknown unit '{value.unit}'"
                hint = f"'{key}' takes {KIND_WORDS[kind]}"
            else:
                message = f"'{key}' takes {KIND_WORDS[kind]}, not '{_shown(value)}'"
                hint = _unit_hint(value, kind)
            self.report("E203", message, value.span, hint=hint)
            return None
        return self._in_kind(value.value * table[value.unit], kind, key, value)

    def _in_kind(self, number: float, kind: str, key: str, value: ast.Quantity
                 ) -> float | None:
        """``number`` if finite and within its kind's limit; else None, reported."""
        shown = _shown(value)
        if not math.isfinite(number):
            # float() of 1e309 is inf: a number no float holds, not "a lot".
            self.report("E206", f"'{key}' is too large a number: {shown}", value.span,
                        hint="write a number below 1e308 (and within the setting's range)")
            return None
        if kind in KIND_LIMITS and abs(number) > KIND_LIMITS[kind][0]:
            self.report("E206", f"'{key}' must be at most {KIND_LIMITS[kind][1]}, not "
                        f"{shown}", value.span)
            return None
        if kind == "rate" and 0 < abs(number) < constants.MIN_RATE:
            self.report("E206", f"'{key}' must be at least {constants.MIN_RATE:g} tok/s, not "
                        f"{shown}", value.span)
            return None
        return number + 0.0  # -0.0 (from `-0`) is 0.0: never a negative zero in a plan

    def integer(self, value: ast.Value, key: str, *, kind: str = "number", minimum: int = 0,
                maximum: int | None = None) -> int | None:
        number = self.quantity(value, kind, key)
        if number is None:
            return None
        if number != int(number):
            self.report("E202", f"'{key}' takes a whole number, not {_shown(value)}",
                        value.span)
            return None
        number = self.at_least(int(number), minimum, key, value.span)
        if number is not None and maximum is not None and number > maximum:
            self.report("E206", f"'{key}' must be at most {maximum:,}, not {_shown(value)}",
                        value.span)
            return None
        return number

    def positive(self, value: ast.Value, kind: str, key: str, *,
                 maximum: float | None = None, smallest: float | None = None
                 ) -> float | None:
        """A number greater than 0 (and at most ``maximum``, and if not 0 at least
        ``smallest``)."""
        number = self.quantity(value, kind, key)
        if number is None:
            return None
        if maximum is not None and number > maximum:
            self.report("E206", f"'{key}' must be at most {_plain(maximum)}, not "
                        f"{_shown(value)}", value.span)
            return None
        if smallest is not None and 0 < number < smallest:
            self.report("E206", f"'{key}' must be at least {smallest:g}, not "
                        f"{_shown(value)}", value.span)
            return None
        return self.at_least(number, 0, key, value.span, strict=True)

    def at_least(self, number, minimum, key: str, span: Span, *, strict: bool = False):
        if number < minimum or (strict and number == minimum):
            relation = "greater than" if strict else "at least"
            self.report("E206", f"'{key}' must be {relation} {minimum:g}, not {number:g}", span)
            return None
        return number

    def in_range(self, number: float | None, low: float, high: float, key: str, span: Span):
        if number is None:
            return None
        if not low <= number <= high:
            self.report("E206", f"'{key}' must be between {low:g} and {high:g}, not "
                        f"{number:g}", span)
            return None
        return number

    def string(self, value: ast.Value, key: str) -> str | None:
        if not isinstance(value, ast.String):
            self.report("E202", f"'{key}' takes a quoted string, not {describe(value)}",
                        value.span)
            return None
        return value.value

    def choice(self, value: ast.Value, key: str, choices: Iterable[str]) -> str | None:
        choices = list(choices)
        words = " or ".join(choices)
        if not isinstance(value, ast.Name):
            self.report("E202", f"'{key}' takes one of {words}, not {describe(value)}",
                        value.span)
            return None
        if value.name not in choices:
            self.report("E206", f"'{key}' must be {words}, not '{value.name}'", value.span,
                        hint=suggest(value.name, choices))
            return None
        return value.name

    def names(self, value: ast.Value, key: str) -> list[ast.Name] | None:
        """A name or a list of names."""
        items = value.items if isinstance(value, ast.ListValue) else (value,)
        names = []
        for item in items:
            if not isinstance(item, ast.Name):
                self.report("E202", f"'{key}' takes names, not {describe(item)}", item.span)
                return None
            names.append(item)
        return names


def _shown(value: ast.Value) -> str:
    """A value as written, cut short: a number can be a megabyte of digits."""
    if not isinstance(value, ast.Quantity):
        return describe(value)
    return _cut(value.text())


def _plain(number: float) -> str:
    """A limit as a person writes it: 1,000,000,000, not 1e+09."""
    return f"{int(number):,}" if number == int(number) and abs(number) < 1e16 else f"{number:g}"


def _cut(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def describe(value: ast.Value) -> str:
    if isinstance(value, ast.Quantity):
        return f"the number '{_cut(value.text())}'"
    if isinstance(value, ast.String):
        return "a string"
    if isinstance(value, ast.Name):
        return f"the name '{value.name}'"
    if isinstance(value, ast.Env):
        return "an environment variable"
    if isinstance(value, ast.ListValue):
        return "a list"
    return "this value"


def _unit_hint(value: ast.Quantity, kind: str) -> str | None:
    number = _cut(value.number, 20)
    if kind == "price" and value.dollars and not value.unit:
        return f"prices are per million tokens: write ${number}/M"
    if kind == "price" and not value.dollars:
        return f"write ${number}/M"
    if kind == "usd" and not value.dollars:
        return f"write ${number}"
    if kind == "duration" and not value.unit:
        return f"write {number}s or {number}ms"
    if kind == "params" and not value.unit:
        return f"write {number}B for billions of parameters"
    if kind == "rate" and not value.unit:
        return f"write {number} tok/s"
    return None


Check = Callable[[CheckState], None]


def read_file_blocks(state: CheckState, kind: type, code: str, noun: str,
                     read: Callable, merge: Callable) -> None:
    """Blocks a file may hold once (``budget``, ``planner``): report the extra ones
    (``code``), read each file's first with ``read(reader, block)`` and ``merge`` the result,
    imported files first, so that an importing file overrides what it imports."""
    for module in state.workspace.modules:
        blocks = [item for item in module.items if isinstance(item, kind)]
        for extra in blocks[1:]:
            state.report(code, f"a file has at most one {noun} block", module.path,
                         extra.span, hint=f"merge it into the block on line "
                                          f"{blocks[0].span.line}")
        if blocks:
            merge(read(Reader(state, module.path), blocks[0]))


def read_each(state: CheckState, declarations: dict, read: Callable, specs: dict) -> None:
    """``specs[name] = read(state, reader, node)`` for every declaration that reads cleanly
    (``read`` returns None after reporting what is wrong)."""
    for name, declared in declarations.items():
        spec = read(state, Reader(state, declared.path), declared.node)
        if spec is not None:
            specs[name] = spec
