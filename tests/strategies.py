"""Hypothesis strategies for random :class:`moac.lang.ast.Module` trees, built node by node.

The trees are ones the parser can produce: names avoid the keywords, options carry one
value, lists hold scalars only, copies carry no tag, and a quantity's tag is never a word the
QUANTITY terminal would swallow as its unit (``12 tok`` is a unit, ``12 in`` a tag).
"""

from __future__ import annotations

from hypothesis import strategies as st

from moac.lang import ast

KEYWORDS = frozenset({"import", "provider", "model", "pipeline", "route", "budget", "from",
                      "layer", "aggregate", "fallback", "without", "env", "x"})
UNIT_WORDS = frozenset({"tok", "tokens", "TFLOPs", "TFLOP"})

NUMBERS = ("0", "12", "1_000", "0.90", "1e5")
UNITS = ("", "/M", "B", "M", "k", "ms", "s", "tok", "tok/s", "%", "TFLOPs")

names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True).filter(
    lambda n: n not in KEYWORDS)
idents = names.map(ast.Ident)
tags = idents.filter(lambda i: i.name not in UNIT_WORDS)

# Characters that stress the string forms: quotes, escapes, line breaks, indentation, braces,
# comment signs, Unicode line separators; plus any other character but NUL (which no .moa
# file may contain) and surrogates.
_TRICKY = st.sampled_from(list('"\\\n\t\r {}[]()#,= ') + ['"""', "\n  ", "\u2028", "\u2029",
                                                          "\x0b", "\x0c", "\x85", "é", "✓"])
texts = st.lists(_TRICKY | st.characters(blacklist_characters="\x00"), max_size=24).map("".join)


def _quantity(tag) -> st.SearchStrategy[ast.Quantity]:
    return st.builds(ast.Quantity, number=st.sampled_from(NUMBERS), unit=st.sampled_from(UNITS),
                     dollars=st.booleans(), negative=st.booleans(), tag=tag)


quantities = _quantity(st.none() | tags)
copies = _quantity(st.none())
strings = texts.map(ast.String)
scalars = st.one_of(quantities, strings, names.map(ast.Name), idents.map(ast.Env))
values = scalars | st.lists(scalars, max_size=4).map(lambda items: ast.ListValue(tuple(items)))


def _tuple(strategy, min_size=0, max_size=3):
    return st.lists(strategy, min_size=min_size, max_size=max_size).map(tuple)


settings = st.builds(ast.Setting, key=idents, values=_tuple(values, 1, 3))
options = st.builds(ast.Setting, key=idents, values=values.map(lambda v: (v,)))
agents = st.builds(ast.Agent, model=idents, copies=st.none() | copies,
                   options=_tuple(options, 0, 3))
layers = st.builds(ast.Layer, name=idents, agents=_tuple(agents, 0, 7),
                   options=_tuple(options, 0, 2))
aggregates = st.builds(ast.Aggregate, agent=agents, fallback=st.none() | agents)
withouts = st.builds(ast.Without, layers=_tuple(idents, 1, 3))
stages = st.one_of(settings, layers, aggregates, withouts)

items = st.one_of(
    st.builds(ast.Import, path=strings),
    st.builds(ast.Provider, name=idents, settings=_tuple(settings)),
    st.builds(ast.Model, name=idents, provider=idents, model_id=strings,
              settings=_tuple(settings)),
    st.builds(ast.Pipeline, name=idents, base=st.none() | idents,
              stages=_tuple(stages, 0, 6)),
    st.builds(ast.Route, name=idents, settings=_tuple(settings)),
    st.builds(ast.Budget, settings=_tuple(settings)),
)
modules = st.builds(ast.Module, path=st.just("<string>"), items=_tuple(items, 0, 5))
