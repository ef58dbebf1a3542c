"""The typed syntax tree of a ``.moa`` file.

Frozen dataclasses built after parsing (as in lark's ``examples/advanced/create_ast.py``);
every node carries the :class:`~moac.lang.diagnostics.Span` it came from. Spans and comments take
no part in equality, so ``parse(fmt(tree)) == tree`` compares meaning, not layout.
Nothing here imports lark.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from moac.lang.diagnostics import Span

NO_SPAN = Span(0, 0, 0, 0, 0, 0)


def _span() -> Span:
    return field(default=NO_SPAN, compare=False, repr=False)


@dataclass(frozen=True)
class Ident:
    name: str
    span: Span = _span()


@dataclass(frozen=True)
class Quantity:
    """A number with its unit as written: ``$1.80/M`` is dollars ``1.80`` per ``/M``.

    ``number`` keeps the digits as typed (``1_000``, ``0.90``) so a formatter can print them
    back unchanged; :attr:`value` is the float. ``tag`` is an optional word after the unit,
    such as ``in`` in ``$1.80/M in`` or ``ttft`` in ``0.4s ttft``.
    """

    number: str
    unit: str = ""
    dollars: bool = False
    negative: bool = False
    tag: Ident | None = None
    span: Span = _span()

    @property
    def value(self) -> float:
        """The number (``inf`` when too large for a float; the checker reports it). ``-0``
        is 0.0, not -0.0."""
        magnitude = float(self.number.replace("_", ""))
        return -magnitude if self.negative and magnitude else magnitude

    @property
    def is_integer(self) -> bool:
        text = self.number.replace("_", "")
        return text.isdigit()

    def text(self) -> str:
        """The quantity as the canonical layout writes it, without its tag."""
        sign = "-" if self.negative else ""
        dollar = "$" if self.dollars else ""
        unit = self.unit
        if unit and unit[0].isalpha() and unit in SPACED_UNITS:
            unit = " " + unit
        return f"{sign}{dollar}{self.number}{unit}"


# Units written after a space: `35 tok/s`, `400 tok`, `5000 TFLOPs`.
SPACED_UNITS = frozenset({"tok/s", "tok", "tokens", "TFLOPs", "TFLOP"})


@dataclass(frozen=True)
class String:
    value: str
    span: Span = _span()


@dataclass(frozen=True)
class Name:
    """A bare word in value position: a provider kind (``openai``), a model, ``true``."""

    name: str
    span: Span = _span()


@dataclass(frozen=True)
class Env:
    """``env VAR``: the *name* of an environment variable. Never a secret itself."""

    var: Ident
    span: Span = _span()


Scalar = Union[Quantity, String, Name, Env]


@dataclass(frozen=True)
class ListValue:
    items: tuple[Scalar, ...]
    span: Span = _span()


Value = Union[Scalar, ListValue]


@dataclass(frozen=True)
class Setting:
    """``key = value, value`` in a block, or ``key = value`` inside ``( ... )``."""

    key: Ident
    values: tuple[Value, ...]
    span: Span = _span()

    @property
    def value(self) -> Value:
        return self.values[0]


@dataclass(frozen=True)
class Agent:
    """A model in a layer: ``qwen110``, ``qwen110 x 3``, ``llama70 (temperature = 0.2)``."""

    model: Ident
    copies: Quantity | None = None
    options: tuple[Setting, ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class Layer:
    name: Ident
    agents: tuple[Agent, ...]
    options: tuple[Setting, ...] = ()
    span: Span = _span()
    agents_span: Span = _span()


@dataclass(frozen=True)
class Aggregate:
    agent: Agent
    fallback: Agent | None = None
    span: Span = _span()


@dataclass(frozen=True)
class Without:
    layers: tuple[Ident, ...]
    span: Span = _span()


Stage = Union[Setting, Layer, Aggregate, Without]


@dataclass(frozen=True)
class Import:
    path: String
    span: Span = _span()


@dataclass(frozen=True)
class Provider:
    name: Ident
    settings: tuple[Setting, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Model:
    name: Ident
    provider: Ident
    model_id: String
    settings: tuple[Setting, ...] = ()
    span: Span = _span()


@dataclass(frozen=True)
class Pipeline:
    name: Ident
    base: Ident | None
    stages: tuple[Stage, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Route:
    name: Ident
    settings: tuple[Setting, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Judge:
    name: Ident
    settings: tuple[Setting, ...]
    span: Span = _span()


@dataclass(frozen=True)
class Budget:
    settings: tuple[Setting, ...]
    span: Span = _span()


@dataclass(frozen=True)
class PlannerBlock:
    """``planner { quality_base = ... }``: the quality model's coefficients, as calibrated."""

    settings: tuple[Setting, ...]
    span: Span = _span()


Item = Union[Import, Provider, Model, Pipeline, Route, Judge, Budget, PlannerBlock]


@dataclass(frozen=True)
class Comment:
    """A ``#`` comment, kept beside the tree so that ``moac fmt`` never drops one."""

    text: str
    span: Span = _span()


@dataclass(frozen=True)
class Module:
    """One parsed file: its items in order, its comments, and the text they came from."""

    path: str
    items: tuple[Item, ...]
    comments: tuple[Comment, ...] = field(default=(), compare=False)
    source: str = field(default="", compare=False, repr=False)
