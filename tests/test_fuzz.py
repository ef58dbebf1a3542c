"""Robustness: no input, however broken, gets anything but a diagnostic.

Random mutations of the examples must compile or raise a :class:`moac.MoaError` whose every
span points inside the text it names; random bytes must decode or raise one; pathological
files through the command line must end with the right exit code and no traceback. Also: the
cached parser and a freshly built one agree, and the grammar passes lark's strict mode.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moac
from moac.lang import parser as moa_parser
from moac.lang.codes import CODES
from moac.constants import MAX_SOURCE_BYTES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.moa"))
EXAMPLE_TEXTS = {p.name: p.read_text(encoding="utf-8") for p in EXAMPLE_FILES}

FUZZ = settings(max_examples=int(os.environ.get("MOAC_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextlib.contextmanager
def cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


# --- checking what comes out --------------------------------------------------------------


def assert_spans_inside(error: moac.MoaError, sources: dict[str, str]) -> None:
    """Every span lies inside the text of the file it names, and every diagnostic renders."""
    assert error.diagnostics, "a MoaError must carry at least one diagnostic"
    for diagnostic in error.diagnostics:
        assert diagnostic.code in CODES, diagnostic
        rendered = diagnostic.render()
        assert rendered.startswith(diagnostic.path)
        span = diagnostic.span
        if span is None:
            continue
        text = diagnostic.source if diagnostic.source is not None else sources.get(
            diagnostic.path)
        assert text is not None, f"no source for {diagnostic.path}: {diagnostic}"
        lines = text.split("\n")
        assert 1 <= span.line <= len(lines), (diagnostic, len(lines))
        assert 1 <= span.column <= len(lines[span.line - 1]) + 1, diagnostic
        assert span.line <= span.end_line <= len(lines), diagnostic
        if span.end_line == span.line:
            assert span.end_column >= span.column, diagnostic
        # The caret line sits under the source line.
        assert "^" in rendered, rendered


def compile_checked(text: str, name: str = "fuzz.moa") -> None:
    try:
        moac.compile_string(text, name)
    except moac.MoaError as error:
        assert_spans_inside(error, {name: text, **EXAMPLE_TEXTS})


# --- mutations ----------------------------------------------------------------------------

INSERTS = st.one_of(
    st.text(max_size=8),
    st.sampled_from(['{', '}', '[', ']', '(', ')', '"', '"""', '\n', '\r\n', '\t', ',', '=',
                     '#', '\\', '\\q', 'x', ' x 3', '$', '/M', 'env', 'from', 'layer',
                     'aggregate', 'fallback', 'without', 'pipeline', 'model', 'import',
                     '"catalog.moa"', '0', '-1', '1e999', '32k', '\x00', '\ufeff', '\u00e9',
                     '\U0001f600', 'qwen110', 'moa', '{responses}', '{', '}}']),
)


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(sorted(EXAMPLE_TEXTS)))
    text = EXAMPLE_TEXTS[name]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "duplicate", "swap", "truncate",
                                     "token_delete", "token_swap", "token_duplicate"]))
        n = len(text)
        if n == 0:
            text = draw(INSERTS)
            continue
        i = draw(st.integers(0, n - 1))
        j = draw(st.integers(i, min(n, i + 40)))
        if kind == "delete":
            text = text[:i] + text[j:]
        elif kind == "insert":
            text = text[:i] + draw(INSERTS) + text[i:]
        elif kind == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif kind == "swap":
            k = draw(st.integers(0, n - 1))
            chars = list(text)
            chars[i], chars[k] = chars[k], chars[i]
            text = "".join(chars)
        elif kind == "truncate":
            text = text[:i]
        else:
            tokens = text.split(" ")
            a = draw(st.integers(0, len(tokens) - 1))
            b = draw(st.integers(0, len(tokens) - 1))
            if kind == "token_delete":
                del tokens[a]
            elif kind == "token_swap":
                tokens[a], tokens[b] = tokens[b], tokens[a]
            else:
                tokens.insert(b, tokens[a])
            text = " ".join(tokens)
    return text


@FUZZ
@given(mutated())
def test_mutated_examples_raise_only_moa_errors(text):
    with cwd(EXAMPLES):
        compile_checked(text)


@FUZZ
@given(st.lists(st.sampled_from([
    "provider", "model", "pipeline", "route", "budget", "import", "layer", "aggregate",
    "fallback", "without", "from", "env", "x", "p", "qwen110", "=", ",", "{", "}", "[", "]",
    "(", ")", "\n", '"s"', '"""t"""', "1", "32k", "$1/M", "0.5s", "35 tok/s", "#c\n",
    "kind", "openai", "temperature", "min_ok", "prompt", '"{responses}"', "candidates",
]), max_size=40).map(" ".join))
def test_token_soup_raises_only_moa_errors(text):
    with cwd(EXAMPLES):
        compile_checked('import "catalog.moa"\n' + text)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_parse_or_raise_syntax_errors(data):
    try:
        moa_parser.parse_bytes(data, "fuzz.moa")
    except moac.MoaSyntaxError as error:
        text = data.decode("utf-8", "replace")
        assert_spans_inside(error, {"fuzz.moa": text})


@FUZZ
@given(st.text(max_size=200))
def test_random_text_parses_or_raises_syntax_errors(text):
    try:
        moa_parser.parse(text, "fuzz.moa")
    except moac.MoaSyntaxError as error:
        assert_spans_inside(error, {"fuzz.moa": text})


@pytest.mark.parametrize("text", [
    "[" * 10000,
    "(" * 10000,
    "{" * 10000,
    "pipeline p {\n  layer a = " + "[" * 10000,
    "provider p {\n  a = " + "[" * 5000 + "1" + "]" * 5000 + "\n}\n",
    "pipeline p {\n" + "  layer l = [qwen110]\n" * 3000 + "  aggregate qwen110\n}\n",
    "#" * 100000,
    "\n" * 100000,
    "x" * 100000,
    '"' + "a" * 100000,
])
def test_pathological_texts(text):
    with cwd(EXAMPLES):
        compile_checked(text)


def test_long_line_renders_a_window():
    text = "provider p {\n  kind = " + "a" * 5000 + " ;\n}\n"
    with pytest.raises(moac.MoaSyntaxError) as caught:
        moac.compile_string(text, "long.moa")
    rendered = caught.value.render()
    assert max(len(line) for line in rendered.splitlines()) < 300


# --- through the command line -------------------------------------------------------------


def run_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moac", "check", path.name], cwd=path.parent,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MOAC_DEBUG": ""})


CLI_CASES = {
    "deep.moa": ("[" * 10000).encode(),
    "empty.moa": b"",
    "binary.moa": bytes(range(256)) * 4,
    "nul.moa": b'provider p {\n  kind = openai\x00\n}\n',
    "latin1.moa": 'model caf\u00e9 = p "x"\n'.encode("latin-1"),
    "truncated_utf8.moa": "# \u20ac".encode()[:-1],
    "bom.moa": b"\xef\xbb\xbf# a comment after a byte-order mark\n",
}
EXPECTED = {"deep.moa": (1, "E001"), "empty.moa": (0, None), "binary.moa": (1, "E002"),
            "nul.moa": (1, "E002"), "latin1.moa": (1, "E002"),
            "truncated_utf8.moa": (1, "E002"), "bom.moa": (0, None)}


@pytest.mark.parametrize("name", sorted(CLI_CASES))
def test_cli_check_on_hostile_files(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(CLI_CASES[name])
    result = run_check(path)
    code, diagnostic = EXPECTED[name]
    assert "Traceback" not in result.stderr
    assert result.returncode == code, result.stderr
    if diagnostic:
        assert f"error[{diagnostic}]" in result.stderr
    else:
        assert "no problems" in result.stderr


def test_cli_ten_megabyte_file(tmp_path):
    path = tmp_path / "huge.moa"
    line = b"# " + b"x" * 1021 + b"\n"
    path.write_bytes(line * (10 * 1024))
    assert path.stat().st_size == 10 * 1024 * 1024 > MAX_SOURCE_BYTES
    result = run_check(path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    # At the line where the limit is passed: 4 MiB of 1 KiB lines ends with line 4,096.
    assert "huge.moa:4097:1: error[E003]: file is 10,485,760 bytes" in result.stderr


def test_cli_compile_empty_file_is_a_usage_error(tmp_path):
    (tmp_path / "empty.moa").write_text("")
    result = subprocess.run([sys.executable, "-m", "moac", "compile", "empty.moa"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "empty.moa declares no pipeline" in result.stderr
    assert result.stdout == ""


def test_empty_and_blank_files_are_valid():
    for text in ("", "\n", "\n\n  \n", "# only a comment\n", "\ufeff"):
        program = moac.compile_string(text, "empty.moa")
        assert program.pipelines == {} and program.routes == {}


# --- the parser itself --------------------------------------------------------------------


def _trees(parser):
    return {name: parser.parse(text) for name, text in EXAMPLE_TEXTS.items()}


def test_cached_parser_matches_a_fresh_one(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = moa_parser.build_parser(cache=True)
    cached = list((tmp_path / "moac").glob("parser-*.pickle"))
    assert len(cached) == 1, list(tmp_path.rglob("*"))
    stamp = cached[0].stat().st_mtime_ns
    second = moa_parser.build_parser(cache=True)  # loads the file the first call wrote
    assert cached[0].stat().st_mtime_ns == stamp
    fresh = moa_parser.build_parser(cache=False)
    expected = _trees(fresh)
    assert _trees(first) == expected
    assert _trees(second) == expected
    # The items are real, not both empty: every example has declarations.
    assert all(items for items in expected.values())


def test_unwritable_cache_directory_falls_back_to_building(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    parser = moa_parser.build_parser(cache=True)
    assert parser.parse(EXAMPLE_TEXTS["moa.moa"])


def test_grammar_builds_in_strict_mode():
    pytest.importorskip("interegular")
    strict = moa_parser.build_parser(cache=False, strict=True)
    fresh = moa_parser.build_parser(cache=False)
    assert _trees(strict) == _trees(fresh)


# --- well-formed files with random settings: the checker, not the parser ----------------

KEYS = sorted({
    "kind", "base_url", "api_key", "parallel", "rpm", "timeout", "connect_timeout",
    "read_timeout", "max_retries", "model_path", "price", "params", "context", "speed",
    "quality", "length", "temperature", "max_tokens", "top_p", "seed", "system", "min_ok",
    "prompt", "candidates", "policy", "agreement", "usd_per_point", "share", "max_usd",
    "max_latency", "max_tflops", "mode", "bogus"})
VALUES = st.sampled_from([
    "openai", "local", "qwen110", "moa", "moa_lite", "budget", "worst", "expected", "x",
    '"https://h.example/v1"', '"ftp://x"', '""', '"sk-123"', '"{responses}"', '"{nope}"',
    '"{"', '"}"', "env KEY", "env K-1", "0", "1", "-1", "3", "0.5", "2.5", "1e999", "100",
    "32k", "1M", "8B", "135M", "111B", "$1", "$0.5/M", "$1/M in", "$2/M out", "30s", "5ms",
    "2min", "35 tok/s", "400 tok", "50%", "500 TFLOPs", "1.5 ttft", "0.4s ttft", "7 active",
    "9 total", "3q", "[]", "[1, 2]", "[0.1, 0.2, 0.3]", "[moa, moa_lite]", "[moa]",
    "[budget, agreement]", "[qwen110, 1]", '["a"]', "[moa, moa]", "[auto, moa]",
])


@st.composite
def setting_lines(draw, max_size=4, multi=True):
    """``key = value[, value...]`` lines; options in parentheses take one value each."""
    lines = []
    for _ in range(draw(st.integers(0, max_size))):
        key = draw(st.sampled_from(KEYS))
        values = draw(st.lists(VALUES, min_size=1, max_size=3 if multi else 1))
        lines.append(f"{key} = {', '.join(values)}")
    return lines


@st.composite
def settings_soup(draw):
    block = "\n  ".join
    inline = ", ".join
    agent = draw(st.sampled_from(["qwen110", "qwen72", "llama70", "nobody", "together"]))
    copies = draw(st.sampled_from(["", " x 3", " x 0", " x 2.5", " x 1k"]))
    return f"""import "catalog.moa"

provider prov {{
  {block(draw(setting_lines()))}
}}

model mod = prov "org/mod" {{
  {block(draw(setting_lines()))}
}}

pipeline fuzzed {{
  {block(draw(setting_lines(2)))}
  layer one = [{agent}{copies} ({inline(draw(setting_lines(2, multi=False)))}), qwen72] ({inline(draw(setting_lines(2, multi=False)))})
  layer two = mod{copies} ({inline(draw(setting_lines(2, multi=False)))})
  aggregate {agent} ({inline(draw(setting_lines(2, multi=False)))}) fallback mod
}}

pipeline derived from {draw(st.sampled_from(["fuzzed", "derived", "nope", "mod"]))} {{
  {block(draw(setting_lines(1)))}
  without {draw(st.sampled_from(["one", "two", "three"]))}
}}

route auto {{
  {block(draw(setting_lines()))}
}}

budget {{
  {block(draw(setting_lines(3)))}
}}
"""


@FUZZ
@given(settings_soup())
def test_random_settings_raise_only_moa_errors(text):
    with cwd(EXAMPLES):
        compile_checked(text)
