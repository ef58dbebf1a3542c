"""The formatter's contract: it keeps meaning, it is idempotent, it keeps every comment.

Golden files: ``tests/golden/fmt/messy.moa`` formats to ``messy.expected.moa``; run with
``MOAC_UPDATE_GOLDEN=1`` to rewrite the expected file after an intended layout change.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moac.lang import ast
from moac.lang.diagnostics import MoaSyntaxError
from moac.lang.fmt import WIDTH, format_module, format_source, string_literal
from moac.lang.parser import parse, scan_comments
from moac.lang.tree_to_ast import unquote

from strategies import modules

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.moa"))
GOLDEN = Path(__file__).resolve().parent / "golden" / "fmt"
MESSY = GOLDEN / "messy.moa"
MESSY_EXPECTED = GOLDEN / "messy.expected.moa"


def comment_texts(text: str) -> list[str]:
    return [c.text for c in scan_comments(text)]


def assert_formats_well(text: str, path: str = "<string>") -> str:
    """Format ``text`` and check the whole contract on it; return the formatted text."""
    formatted = format_source(text, path)
    assert parse(formatted, path) == parse(text, path)
    assert format_source(formatted, path) == formatted
    assert comment_texts(formatted) == comment_texts(text)
    return formatted


# --- examples and golden files ---------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_formats_stably(path: Path) -> None:
    assert_formats_well(path.read_text(encoding="utf-8"), str(path))


def test_messy_golden() -> None:
    formatted = assert_formats_well(MESSY.read_text(encoding="utf-8"), "messy.moa")
    if os.environ.get("MOAC_UPDATE_GOLDEN", "") not in ("", "0"):
        MESSY_EXPECTED.write_text(formatted, encoding="utf-8")
    assert formatted == MESSY_EXPECTED.read_text(encoding="utf-8")


def test_expected_golden_is_canonical() -> None:
    expected = MESSY_EXPECTED.read_text(encoding="utf-8")
    assert format_source(expected) == expected
    assert max(len(line) for line in expected.split("\n") if "#" not in line) <= WIDTH


# --- layout rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n", "\n\n  \n", "\ufeff"])
def test_empty_module_formats_to_nothing(text: str) -> None:
    assert format_source(text) == ""


def test_comments_only() -> None:
    assert format_source("  # one\n\n\n# two  \n") == "# one\n\n# two  \n"


def test_imports_stay_together_and_items_are_one_blank_line_apart() -> None:
    text = 'import "a.moa"\n\n\nimport "b.moa"\nbudget {}\n\n\n\nroute r { x_ = 1 }'
    assert format_source(text) == ('import "a.moa"\nimport "b.moa"\n\nbudget {}\n\n'
                                   "route r {\n  x_ = 1\n}\n")


def test_model_without_settings_has_no_braces() -> None:
    assert format_source('model m = p "id" {\n}') == 'model m = p "id"\n'
    # ...unless a comment lives inside the braces.
    assert format_source('model m = p "id" {\n  # why\n}') == 'model m = p "id" {\n  # why\n}\n'


def test_pipeline_settings_are_set_apart_from_stages() -> None:
    text = "pipeline p {\ntemperature=0.7\n\n\nlayer a = [m, n]\n\nwithout a\naggregate m\n}"
    assert format_source(text) == ("pipeline p {\n  temperature = 0.7\n\n  layer a = [m, n]\n"
                                   "  without a\n  aggregate m\n}\n")


@pytest.mark.parametrize("written, canonical", [
    ("[a x 6 (t = 1)]", "a x 6 (t = 1)"),   # one agent, no layer options: bare
    ("a x 6 (t = 1)", "a x 6 (t = 1)"),
    ("[a] (min_ok = 1)", "[a] (min_ok = 1)"),  # layer options need the brackets
    ("[a (t = 1)] (min_ok = 1)", "[a (t = 1)] (min_ok = 1)"),
    ("[]", "[]"),
    ("[a, b,]", "[a, b]"),
])
def test_layer_forms(written: str, canonical: str) -> None:
    text = f"pipeline p {{\n  layer l = {written}\n}}\n"
    assert format_source(text) == f"pipeline p {{\n  layer l = {canonical}\n}}\n"
    assert parse(format_source(text)) == parse(text)


def test_long_lines_break_one_element_a_line() -> None:
    agents = ", ".join(f"model_number_{i} (temperature = 0.{i})" for i in range(6))
    text = f"pipeline p {{\n  layer l = [{agents}] (min_ok = 2)\n}}\n"
    formatted = assert_formats_well(text)
    lines = formatted.split("\n")
    assert lines[1] == "  layer l = ["
    assert lines[2] == "    model_number_0 (temperature = 0.0),"
    assert lines[8] == "  ] (min_ok = 2)"
    assert all(len(line) <= WIDTH for line in lines)


@pytest.mark.parametrize("value", [
    "one\ntwo", "a \"quoted\" \\ line\n\tindented\n", '"""\n""""', "\n\nx\n\n", "end\n",
    "  all\n  indented", "x\n  \ny", "cr\r\nlf", "\u2028\n\u2029",
])
def test_string_literal_reads_back(value: str) -> None:
    for indent in ("", "    "):
        literal = string_literal(value, indent)
        assert unquote(literal) == (value, None)
        text = f"provider p {{\n  k = {literal}\n}}\n"
        assert parse(text).items[0].settings[0].values[0] == ast.String(value)


def test_multi_line_string_uses_the_long_form() -> None:
    text = 'provider p {\n  system = "Be brief.\\nBe right."\n}\n'
    assert format_source(text) == ('provider p {\n  system = """\n    Be brief.\n    Be right.\n'
                                   '  """\n}\n')


def test_crlf_source() -> None:
    text = "# head\r\nprovider p {  # h\r\n  k = 1  # t\r\n}\r\n"
    assert assert_formats_well(text) == "# head\nprovider p {  # h\n  k = 1  # t\n}\n"


def test_syntax_error_propagates() -> None:
    with pytest.raises(MoaSyntaxError):
        format_source("provider p {\n  k = \n}\n")


# --- properties -----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(modules)
def test_round_trip(module: ast.Module) -> None:
    text = format_module(module)
    assert parse(text, module.path) == module
    assert format_source(text, module.path) == text
    assert text == "" or (text.endswith("\n") and not text.endswith("\n\n"))


_STRING = re.compile(r'"""(?:[^"\\]|\\[\s\S]|"(?!""))*"""|"(?:[^"\\\n]|\\.)*"|#[^\n]*')
CORPUS = {p.name: p.read_text(encoding="utf-8") for p in [*EXAMPLES, MESSY]}
comment_bodies = st.text(st.characters(blacklist_characters="\n\r\x00"), max_size=12)


def _inside_strings(text: str) -> set[int]:
    """Offsets of the newlines that lie inside a string literal."""
    inside = set()
    for match in _STRING.finditer(text):
        if not match.group().startswith("#"):
            inside.update(i for i in range(*match.span()) if text[i] == "\n")
    return inside


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(CORPUS)), st.data())
def test_comments_are_preserved(name: str, data) -> None:
    text = CORPUS[name]
    lines = text.split("\n")
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    in_string = _inside_strings(text)
    commented = {c.span.line - 1 for c in scan_comments(text)}
    # Own-line comments go before line i unless the newline before it is inside a string;
    # trailing comments go after line i unless its newline is inside a string or it has one.
    own = [i for i in range(len(lines)) if i == 0 or starts[i] - 1 not in in_string]
    trail = [i for i in range(len(lines) - 1)
             if starts[i + 1] - 1 not in in_string and i not in commented]
    before: dict[int, list[str]] = {}
    after: dict[int, str] = {}
    for _ in range(data.draw(st.integers(0, 8), label="how many")):
        body = data.draw(comment_bodies, label="body")
        if data.draw(st.booleans(), label="own line"):
            indent = data.draw(st.sampled_from(["", "  ", "\t", "      "]), label="indent")
            before.setdefault(data.draw(st.sampled_from(own)), []).append(f"{indent}#{body}")
        else:
            gap = " " * data.draw(st.integers(0, 3), label="gap")
            after[data.draw(st.sampled_from(trail))] = f"{gap}#{body}"
    mutated = "\n".join(
        "\n".join([*before.get(i, []), line + after.get(i, "")]) for i, line in enumerate(lines))
    assert len(comment_texts(mutated)) == (len(comment_texts(text)) + len(after)
                                           + sum(map(len, before.values())))
    formatted = format_source(mutated, name)
    assert comment_texts(formatted) == comment_texts(mutated)
    assert parse(formatted, name) == parse(text, name)
    assert format_source(formatted, name) == formatted
