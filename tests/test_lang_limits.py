"""The front end's limits, as classes (issue 12, items 5-7 and the language parts of 18).

- Positions are found without counting from the start of the file, and are still right far
  into it: comments, bad escapes, source excerpts (checked against a naive count).
- The rewritten linear string code reads and writes exactly what the loops it replaced did.
- A file is held to a number of tokens (E003 at the token past it); a run of blank and
  comment lines is one token. An imported file over a limit is reported at the ``import``.
- Only regular files are read; an import names a ``.moa`` file (E107), nests at most so deep
  (E106); derivation nests at most so deep (E311); agents are capped per pipeline and for a
  workspace (E310), copies included. None of it exhausts Python's stack, in any order.
- Every quantity is finite, in range and never -0.0, or a diagnostic points at it.
- ``moac graph`` names what a file declares; ``moac fmt -`` never tracebacks.

Speed is measured by bench/parse.py, never asserted here.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import moac
import moac.cli.main as cli
import moac.lang.loader as loader_module
import moac.lang.parser as parser_module
from moac import constants
from moac.lang.diagnostics import Diagnostic, MoaError, MoaSyntaxError, Span
from moac.lang.fmt import _long_body, format_source
from moac.lang.parser import parse, scan_comments
from moac.lang.tree_to_ast import unquote

ROOT = Path(__file__).resolve().parent.parent
FUZZ = settings(max_examples=int(os.environ.get("MOAC_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

PREAMBLE = ('provider p {\n  kind = openai\n  base_url = "https://api.example.com/v1"\n}\n\n'
            'model m = p "org/m" {\n  price = $0.10/M\n  params = 7B\n  context = 128k\n}\n\n')
PIPELINE = "pipeline a {\n  aggregate m\n}\n"


def diagnostics_of(text: str, tmp_path: Path, name: str = "main.moa") -> list[Diagnostic]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return moac.check_file(path)


def naive_position(text: str, offset: int) -> tuple[int, int]:
    """(line, column) of ``offset``, counted from the start: the reference."""
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def token_count(text: str) -> int:
    """The tokens of ``text`` as the limit counts them."""
    saved, parser_module.MAX_SOURCE_TOKENS = parser_module.MAX_SOURCE_TOKENS, 10 ** 9
    try:
        return sum(1 for _ in parser_module.get_parser().lex(text))
    finally:
        parser_module.MAX_SOURCE_TOKENS = saved


# --- positions far into a file ---------------------------------------------------------------


def test_comment_positions_are_right_at_line_30000():
    lines = [f"# comment {i}" for i in range(29_999)]  # lines 1 to 29,999
    lines += ["pipeline a {  # after code, on line 30,000", "  aggregate m", "}"]
    text = "\n".join(lines) + "\n"
    comments = parse(text).comments
    assert len(comments) == 30_000
    last = comments[-1]
    assert last.text == "# after code, on line 30,000"
    assert (last.span.line, last.span.column) == (30_000, 15)
    assert text[last.span.start:last.span.end] == last.text
    assert (comments[12_345].span.line, comments[12_345].span.column) == (12_346, 1)
    formatted = format_source(text)
    assert formatted.count("# comment ") == 29_999
    assert "pipeline a {  # after code, on line 30,000" in formatted


_PIECES = st.sampled_from(["# c", "#", "x = 1", ' "a#b" ', '"""\n#no\n"""', "\r\n", "\n",
                           '"\\"#"', "\t# t", "é#", '"""a"""#k', "'#'"])


@FUZZ
@given(st.lists(_PIECES, max_size=40).map("".join))
def test_comment_positions_match_a_count_from_the_start(text):
    for comment in scan_comments(text):
        assert (comment.span.line, comment.span.column) == naive_position(text, comment.span.start)
        assert text.startswith(comment.text, comment.span.start)


@FUZZ
@given(prefix=st.integers(0, 400), before=st.text("ab \n", max_size=30),
       long=st.booleans())
def test_a_bad_escape_is_placed_where_it_is(prefix, before, long):
    if not long:
        before = before.replace("\n", " ")
    quote = '"""' if long else '"'
    text = ("# filler\n" * prefix + PREAMBLE + "pipeline a {\n  system = " + quote + before
            + "\\q" + quote + "\n  aggregate m\n}\n")
    with pytest.raises(MoaSyntaxError) as caught:
        parse(text)
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.code == "E004" and "\\q" in diagnostic.message
    offset = text.index("\\q")
    assert diagnostic.span.start == offset
    assert (diagnostic.span.line, diagnostic.span.column) == naive_position(text, offset)


@FUZZ
@given(st.lists(st.text("ab#é\r", max_size=30), min_size=1, max_size=6), st.data())
def test_an_excerpt_shows_the_line_it_names(lines, data):
    source = "\n".join(lines)
    line = data.draw(st.integers(1, len(lines)))
    shown = lines[line - 1].rstrip("\r")
    rendered = Diagnostic("E001", "m", "p.moa", Span.point(line, 1), source=source).render()
    assert rendered.split("\n")[1] == f"{line:>4} | {shown}"


def test_many_diagnostics_on_one_long_line_each_show_their_own_name(tmp_path):
    names = [f"nope{i}" for i in range(2_000)]
    text = (PREAMBLE + PIPELINE + "pipeline b {\n  aggregate m\n}\n\nroute r {\n  candidates = ["
            + ", ".join(["a", "b"] + names) + "]\n}\n")
    diagnostics = [d for d in diagnostics_of(text, tmp_path) if d.code == "E501"]
    assert len(diagnostics) == len(names)
    for diagnostic in diagnostics[::97]:
        name = re.search(r"'(nope\d+)'", diagnostic.message).group(1)
        excerpt, caret = diagnostic.render().split("\n")[1:3]
        assert excerpt[caret.index("^"):].startswith(name)


# --- the linear string code reads and writes what the loops did -------------------------------

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}


def unquote_by_loop(raw: str) -> tuple[str, int | None]:
    """The character loop that ``unquote`` replaced (its dedent step is shared)."""
    from moac.lang.tree_to_ast import dedent_long_string
    long = raw.startswith('"""')
    body = raw[3:-3] if long else raw[1:-1]
    out, i, bad = [], 0, None
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
            elif long and nxt == "\n":
                pass
            elif long and nxt == "\r" and body.startswith("\n", i + 2):
                i += 3
                continue
            else:
                bad = bad if bad is not None else i + (3 if long else 1)
                out.append(nxt)
            i += 2
            continue
        out.append(char)
        i += 1
    value = "".join(out)
    return (dedent_long_string(value) if long else value), bad


def long_body_by_loop(value: str) -> str:
    out, run = [], 0
    for char in value:
        run = run + 1 if char == '"' else 0
        if run == 3:
            out.append('\\"')
            run = 0
        else:
            out.append({"\\": "\\\\", "\r": "\\r"}.get(char, char))
    return "".join(out)


_BODY = st.text(st.sampled_from(list('ab"\\\n\r\t q ')), max_size=30)


@FUZZ
@given(_BODY, st.booleans())
def test_unquote_reads_what_the_loop_read(body, long):
    raw = ('"""' + body + '"""') if long else ('"' + body + '"')
    assert unquote(raw) == unquote_by_loop(raw)


@FUZZ
@given(_BODY)
def test_long_strings_are_written_as_the_loop_wrote_them(value):
    assert _long_body(value) == long_body_by_loop(value)


# --- the token limit ---------------------------------------------------------------------------


def test_the_token_past_the_limit_gets_e003_where_it_is(monkeypatch):
    text = PREAMBLE + "pipeline a {\n  layer l = [m, m, m]\n  aggregate m\n}\n"
    tokens = token_count(text)
    monkeypatch.setattr(parser_module, "MAX_SOURCE_TOKENS", tokens)
    parse(text, "a.moa")  # exactly at the limit: fine
    monkeypatch.setattr(parser_module, "MAX_SOURCE_TOKENS", tokens - 1)
    with pytest.raises(MoaSyntaxError) as caught:
        parse(text, "a.moa")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.code == "E003"
    assert f"more than {tokens - 1:,} tokens" in diagnostic.message
    # The last token is the final newline, after the closing brace.
    assert diagnostic.span.start == len(text) - 1
    assert diagnostic.render().startswith(f"a.moa:{text.count(chr(10))}:2: error[E003]")


def test_blank_and_comment_lines_are_one_token(monkeypatch):
    filler = "\n".join(["# a comment", "", "   ", "\t# indented", "\r"] * 4_000)
    text = PREAMBLE + filler + "\n" + PIPELINE + filler
    monkeypatch.setattr(parser_module, "MAX_SOURCE_TOKENS", token_count(PREAMBLE + PIPELINE) + 4)
    module = parse(text)
    assert len(module.items) == 3 and len(module.comments) == 16_000


def test_a_file_just_past_the_real_token_limit_is_refused(tmp_path):
    names = ", ".join(["x"] * (constants.MAX_SOURCE_TOKENS // 2))
    diagnostics = diagnostics_of(PREAMBLE + f"route r {{\n  candidates = [{names}]\n}}\n",
                                 tmp_path)
    assert [d.code for d in diagnostics] == ["E003"]
    assert diagnostics[0].span is not None


def test_an_imported_file_over_a_limit_is_reported_at_its_import(tmp_path, monkeypatch):
    (tmp_path / "huge.moa").write_bytes(b"#" * (constants.MAX_SOURCE_BYTES + 1))
    (tmp_path / "dense.moa").write_text(PREAMBLE + PIPELINE)
    text = 'import "huge.moa"\n\nimport "dense.moa"\n'
    monkeypatch.setattr(parser_module, "MAX_SOURCE_TOKENS", 20)
    diagnostics = diagnostics_of(text, tmp_path)
    assert [(d.code, d.path, d.span.line, d.span.column) for d in diagnostics] == [
        ("E003", str(tmp_path / "main.moa"), 1, 8), ("E003", str(tmp_path / "main.moa"), 3, 8)]
    huge, dense = diagnostics
    assert huge.message.startswith(f"imported file 'huge.moa' is "
                                   f"{constants.MAX_SOURCE_BYTES + 1:,} bytes")
    assert "more than 20 tokens" in dense.message and "passed at " in dense.message
    assert 'import "huge.moa"' in huge.render()


# --- files that are not .moa files ---------------------------------------------------------------


def run_check(*args: str, cwd: Path, stdin=None, timeout: float = 60):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "moac", *args], cwd=cwd, capture_output=True,
                          timeout=timeout, env=env, stdin=stdin)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_devices_and_pipes_are_refused_without_reading_them(tmp_path):
    os.mkfifo(tmp_path / "pipe.moa")  # opening it to read would wait for a writer forever
    (tmp_path / "main.moa").write_text('import "pipe.moa"\nimport "/dev/zero"\n')
    result = run_check("check", "main.moa", cwd=tmp_path)
    err = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err
    assert "main.moa:1:8: error[E107]: imported 'pipe.moa' is not a regular file" in err
    assert "main.moa:2:8: error[E107]: imported '/dev/zero' is not a regular file" in err
    for root, kind in (("pipe.moa", "a named pipe"), ("/dev/zero", "a device")):
        result = run_check("check", root, cwd=tmp_path)
        assert result.returncode == 1
        assert f"error[E006]: is {kind}, not a regular file" in result.stderr.decode()


def test_a_foreign_file_is_named_not_quoted(tmp_path):
    secret = "hunter2-do-not-print"
    (tmp_path / "passwd").write_text(f"root:x:0:0:{secret}\n")
    (tmp_path / "notes.txt.moa.bak").write_text(secret)
    (tmp_path / "folder").mkdir()
    text = 'import "passwd"\nimport "notes.txt.moa.bak"\nimport "folder"\n'
    diagnostics = diagnostics_of(text, tmp_path)
    assert [(d.code, d.span.line) for d in diagnostics] == [("E107", 1), ("E107", 2),
                                                            ("E107", 3)]
    rendered = "\n".join(d.render() for d in diagnostics)
    assert secret not in rendered
    assert "is not a .moa file" in diagnostics[0].message
    assert "is a directory, not a .moa file" in diagnostics[2].message


# --- depth: imports and derivation, without recursion ---------------------------------------------


def import_chain(tmp_path: Path, depth: int) -> Path:
    """main.moa -> f1.moa -> ... -> f{depth}.moa, the last declaring a pipeline."""
    names = ["main.moa"] + [f"f{i}.moa" for i in range(1, depth + 1)]
    for name, child in zip(names, names[1:]):
        (tmp_path / name).write_text(f'import "{child}"\n')
    (tmp_path / names[-1]).write_text(PREAMBLE + PIPELINE)
    return tmp_path / "main.moa"


def test_an_import_chain_490_files_deep_is_an_error_not_a_crash(tmp_path):
    result = run_check("check", import_chain(tmp_path, 490).name, cwd=tmp_path)
    err = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err and "internal error" not in err
    deepest = f"f{constants.MAX_IMPORT_DEPTH}.moa"
    assert err.startswith(f"{deepest}:1:8: error[E106]: imports nest more than "
                          f"{constants.MAX_IMPORT_DEPTH} files deep")


def test_an_import_chain_at_the_depth_limit_loads(tmp_path):
    program = moac.compile_file(import_chain(tmp_path, constants.MAX_IMPORT_DEPTH))
    assert list(program.pipelines) == ["a"]


def test_imports_shared_by_many_files_load_once_and_report_once(tmp_path):
    (tmp_path / "broken.moa").write_text("pipeline {\n")
    for i in range(50):
        (tmp_path / f"user{i}.moa").write_text('import "broken.moa"\nimport "missing.moa"\n')
    text = "".join(f'import "user{i}.moa"\n' for i in range(50))
    diagnostics = diagnostics_of(text, tmp_path)
    assert sum(d.code == "E001" for d in diagnostics) == 1  # in broken.moa, once
    assert sum(d.code == "E103" for d in diagnostics) == 50  # at each import of it


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_a_long_derivation_chain_is_an_error_not_a_crash(tmp_path, order):
    chain = [f"pipeline p{i} from p{i - 1} {{\n}}\n" for i in range(1, 3_000)]
    if order == "reverse":
        chain.reverse()
    diagnostics = diagnostics_of(PREAMBLE + "pipeline p0 {\n  aggregate m\n}\n" + "".join(chain),
                                 tmp_path)
    assert {d.code for d in diagnostics} == {"E311"}
    too_deep = {re.search(r"'(p\d+)'", d.message).group(1) for d in diagnostics}
    limit = constants.MAX_DERIVATION_DEPTH
    assert f"p{limit + 1}" in too_deep and f"p{limit}" not in too_deep


def test_a_derivation_chain_at_the_limit_compiles(tmp_path):
    chain = "".join(f"pipeline p{i} from p{i - 1} {{\n}}\n"
                    for i in range(1, constants.MAX_DERIVATION_DEPTH + 1))
    path = tmp_path / "main.moa"
    path.write_text(PREAMBLE + "pipeline p0 {\n  aggregate m\n}\n" + chain)
    program = moac.compile_file(path)
    assert len(program.pipelines) == constants.MAX_DERIVATION_DEPTH + 1


def test_deeply_nested_brackets_are_a_syntax_error(tmp_path):
    for opener, head in (("[", "  max_tokens = "), ("(", "  layer l = [m ")):
        text = PREAMBLE + "pipeline a {\n" + head + opener * 100_000 + "\n}\n"
        diagnostics = diagnostics_of(text, tmp_path)
        assert [d.code for d in diagnostics] == ["E001"]
        assert diagnostics[0].span.line == text.count("\n", 0, text.index(opener * 2)) + 1


# --- agents: copies and derivation counted -------------------------------------------------------


def test_a_pipeline_is_held_to_its_agent_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "MAX_PIPELINE_AGENTS", 10)
    at_limit = "pipeline a {\n  layer l = [m x 4, m x 5]\n  aggregate m\n}\n"
    assert diagnostics_of(PREAMBLE + at_limit, tmp_path) == []
    over = "pipeline b {\n  layer l = [m x 4, m x 5]\n  aggregate m fallback m\n}\n"
    (diagnostic,) = diagnostics_of(PREAMBLE + over, tmp_path)
    assert diagnostic.code == "E310" and "more than 10 agents" in diagnostic.message
    assert diagnostic.render().split("\n")[1].endswith("aggregate m fallback m")
    copies = "pipeline c {\n  layer l = [m x 11]\n  aggregate m\n}\n"
    (diagnostic,) = diagnostics_of(PREAMBLE + copies, tmp_path)
    assert (diagnostic.code, diagnostic.message) == ("E206", "'copies' must be at most 10, "
                                                             "not 11")


def test_derived_pipelines_count_toward_the_workspace_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "MAX_WORKSPACE_AGENTS", 50)
    base = "pipeline base {\n  layer l = m x 9\n  aggregate m\n}\n"  # 10 agents
    derived = "".join(f"pipeline d{i} from base {{\n  max_tokens = 64\n}}\n" for i in range(9))
    diagnostics = diagnostics_of(PREAMBLE + base + derived, tmp_path)
    (diagnostic,) = diagnostics
    assert diagnostic.code == "E310" and "pipeline 'd4' passes the limit" in diagnostic.message
    assert diagnostics_of(PREAMBLE + base + derived.split("pipeline d4")[0], tmp_path) == []


def test_a_base_setting_is_read_once_however_many_pipelines_derive_from_it(tmp_path,
                                                                             monkeypatch):
    import moac.checks.pipelines as pipelines
    scans = []
    real = pipelines.check_template
    monkeypatch.setattr(pipelines, "check_template",
                        lambda reader, value, text: scans.append(text) or real(reader, value,
                                                                               text))
    base = ('pipeline base {\n  prompt = "no slot here"\n  layer a = m\n  layer b = m\n'
            "  aggregate m\n}\n")
    derived = "".join(f"pipeline d{i} from base {{\n}}\n" for i in range(300))
    diagnostics = diagnostics_of(PREAMBLE + base + derived, tmp_path)
    assert [d.code for d in diagnostics] == ["E401"]  # said once, at the prompt
    assert len(scans) == 1  # and the prompt scanned once, not once per pipeline


def test_did_you_mean_stops_once_its_budget_is_spent(tmp_path, monkeypatch):
    models = "".join(f'model known{i} = p "x" {{\n  price = $1/M\n  params = 7B\n'
                     f'  context = 8k\n}}\n' for i in range(100))
    pipelines = "".join(f"pipeline p{i} {{\n  aggregate knwn{i}\n}}\n" for i in range(100))
    from moac.checks import state
    monkeypatch.setattr(constants, "SUGGESTION_COMPARISONS", 10 * (100 + 1 + 50))
    diagnostics = diagnostics_of(PREAMBLE + models + pipelines, tmp_path)
    unknown = [d for d in diagnostics if d.code == "E101"]
    assert len(unknown) == 100
    hinted = [d for d in unknown if d.hint and "did you mean" in d.hint]
    assert len(hinted) == 10 and hinted == unknown[:10]
    assert state.suggest("knwn", ["known"]) == "did you mean 'known'?"  # outside a check


# --- numbers ---------------------------------------------------------------------------------------

# Each setting a number can go in, as the text around it; {} is the number.
NUMBER_SITES = [
    ("model", "price = ${}/M"), ("model", "price = ${}/M in, $1/M out"),
    ("model", "params = {}B"), ("model", "params = 7B active, {}B total"),
    ("model", "context = {}"), ("model", "context = {}k"), ("model", "speed = {}s ttft"),
    ("model", "speed = {} tok/s"), ("model", "quality = {}"), ("model", "length = {} tok"),
    ("provider", "parallel = {}"), ("provider", "timeout = {}s"), ("provider", "rpm = {}"),
    ("provider", "max_retries = {}"), ("provider", "read_timeout = {}ms"),
    ("pipeline", "temperature = {}"), ("pipeline", "max_tokens = {}"), ("pipeline", "top_p = {}"),
    ("pipeline", "seed = {}"), ("pipeline", "min_ok = {}"), ("layer", "m x {}"),
    ("layer", "m (temperature = {})"), ("budget", "max_usd = ${}"),
    ("budget", "max_latency = {}s"), ("budget", "max_tflops = {}"),
    ("route", "usd_per_point = ${}"), ("route", "share = {}"), ("judge", "temperature = {}"),
    ("judge", "max_tokens = {}"), ("planner", "quality_base = {}"),
]


def numbered_file(site: str, setting: str, number: str) -> tuple[str, int]:
    """A file that is correct but for the number at ``site``, and the line it is on."""
    put = setting.format(number)
    key = setting.split(" = ")[0]
    inside = f"  {put}\n"
    model_settings = "".join(f"  {line}\n" for line in ("price = $0.10/M", "params = 7B",
                                                         "context = 128k")
                             if line.split(" = ")[0] != key)
    used = "n" if site == "model" else "m"  # the model the pipelines call
    blocks = [
        'provider p {\n  kind = openai\n  base_url = "https://api.example.com/v1"\n'
        + (inside if site == "provider" else "") + "}\n",
        'model m = p "org/m" {\n  price = $0.10/M\n  params = 7B\n  context = 128k\n}\n',
        f'model n = p "org/n" {{\n{inside}{model_settings}}}\n' if site == "model" else "",
        "pipeline a {\n" + (inside if site == "pipeline" else "")
        + (f"  layer l = [{put}]\n" if site == "layer" else f"  layer l = [{used}, {used}]\n")
        + f"  aggregate {used}\n}}\n",
        f"pipeline b {{\n  aggregate {used}\n}}\n",
        "budget {\n" + (inside if site == "budget" else "") + "}\n",
        "route r {\n  candidates = [a, b]\n  policy = preroute\n"
        + (inside if site == "route" else "  share = 0.5\n") + "}\n",
        "judge j {\n  model = m\n  protocol = single\n" + (inside if site == "judge" else "")
        + "}\n",
        "planner {\n" + (inside if site == "planner" else "") + "}\n",
    ]
    text = "\n".join(block for block in blocks if block)
    return text, text.count("\n", 0, text.index(put)) + 1


def _all_numbers(value):
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _all_numbers(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _all_numbers(item)


def _refuse(constant: str):
    raise ValueError(f"{constant} in a plan")


NUMBERS = st.one_of(
    st.sampled_from(["0", "-0", "1", "0.5", "1e308", "1e309", "1e-400", "1e-300", "0.0009",
                     "2147483647", "2147483648", "4096", "4097", "1_000_000", "604800",
                     "604801"]),
    st.builds(lambda digits, exp: f"{digits}e{exp}", st.integers(1, 99), st.integers(-400, 400)),
    st.integers(0, 400).map(lambda n: "9" * n or "0"),
    st.builds(lambda sign, n: sign + str(n), st.sampled_from(["", "-"]), st.integers(0, 10**12)),
)


@FUZZ
@given(site=st.sampled_from(NUMBER_SITES), number=NUMBERS)
@example(site=("model", "speed = {} tok/s"), number="1e-306")  # a latency past any float
@example(site=("model", "price = ${}/M"), number="1e309")  # inf
@example(site=("model", "price = ${}/M"), number="-0")  # -0.0
@example(site=("budget", "max_usd = ${}"), number="1e400")
@example(site=("pipeline", "max_tokens = {}"), number="9" * 400)
def test_every_quantity_is_finite_and_in_range_or_reported_at_its_value(tmp_path, site, number):
    where, setting = site
    if number.startswith("-") and "$" in setting:
        setting = setting.replace("${}", "-${}")
        number = number[1:]
    text, line = numbered_file(where, setting, number)
    path = tmp_path / "n.moa"
    path.write_text(text)
    try:
        program = moac.compile_file(path)
    except MoaError as error:
        assert all(d.span is not None for d in error.diagnostics), error.render()
        # At the value, unless a value in range makes a call too long for its context.
        assert any(d.span.line == line for d in error.diagnostics) or \
            {d.code for d in error.diagnostics} == {"E404"}, error.render()
        return
    dumps = [spec.model_dump() for table in (program.providers, program.models,
                                              program.pipelines, program.routes, program.judges)
             for spec in table.values()]
    dumps += [program.budget.model_dump(), program.quality.model_dump()]
    from planner import estimate
    for name in program.pipelines:
        plan = program.plan(name)
        dumps.append(json.loads(plan.to_json(), parse_constant=_refuse))
        # What the planner makes of it is a number too: a speed of 1e-300 tok/s would
        # make a latency no float holds.
        for mode in ("expected", "worst"):
            cost = estimate(plan, mode=mode)
            dumps.append([float(cost.usd), float(cost.latency_s), float(cost.tflops)])
    for value in _all_numbers(dumps):
        assert math.isfinite(value), (setting, number)
        assert math.copysign(1.0, value) > 0 or value != 0, (setting, number, "-0.0")


def test_negative_zero_is_zero(tmp_path):
    path = tmp_path / "z.moa"
    path.write_text(PREAMBLE.replace("$0.10/M", "-$0/M") + "pipeline a {\n  temperature = -0\n"
                    "  aggregate m\n}\n")
    plan = moac.compile_file(path).plan("a").to_json()
    assert "-0.0" not in plan
    assert moac.compile_file(path).models["m"].usd_per_m_input == 0.0


# --- moac graph and moac fmt - ---------------------------------------------------------------------


@pytest.mark.parametrize("declared, said", [
    (PIPELINE + "pipeline b {\n  aggregate m\n}\n", "declares 2 pipelines;"),
    (PIPELINE + "pipeline b {\n  aggregate m\n}\nroute r {\n  candidates = [a, b]\n}\n",
     "declares 2 pipelines and 1 route;"),
    (PIPELINE + "pipeline b {\n  aggregate m\n}\nroute r {\n  candidates = [a, b]\n}\n"
     "route s {\n  candidates = [a, b]\n}\n", "declares 2 pipelines and 2 routes;"),
])
def test_graph_names_only_what_the_file_declares(tmp_path, capsys, declared, said):
    path = tmp_path / "g.moa"
    path.write_text(PREAMBLE + declared)
    assert cli.main(["graph", str(path)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert said in err
    if "route" not in declared:
        assert "route" not in err


class _Stdin:
    def __init__(self, data: bytes | None):
        self.buffer = io.BytesIO(data or b"")
        self.closed = data is None


class _Stdout(io.TextIOWrapper):
    def __init__(self):
        super().__init__(io.BytesIO(), encoding="ascii")


@FUZZ
@given(st.binary(max_size=200) | st.lists(st.sampled_from(
    [b"provider p {\n", b"  kind = openai\n", b"}\n", b"\xff", b"\xc3\xa9", b"\xed\xa0\x80",
     b"model m = p \"", b"\"\n", b"# \xe9t\xe9\n", b"\x00", b"\r\n"]), max_size=12).map(b"".join))
def test_fmt_stdin_never_tracebacks(monkeypatch, capsys, data):
    monkeypatch.setattr(sys, "stdin", _Stdin(data))
    out = _Stdout()
    monkeypatch.setattr(sys, "stdout", out)
    code = cli.main(["fmt", "-"])
    err = capsys.readouterr().err
    assert code in (cli.EXIT_OK, cli.EXIT_PROBLEMS), err
    assert "internal error" not in err
    if code == cli.EXIT_OK:
        out.flush()
        text = out.buffer.getvalue().decode("utf-8")  # written as UTF-8 whatever the locale
        assert text == format_source(data.decode("utf-8-sig"))
    else:
        assert re.match(r"<stdin>:\d+:\d+: error\[E00[1-5]\]", err), err


def test_fmt_stdin_points_at_an_invalid_byte_and_handles_no_stdin(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", _Stdin(b"provider p {\n  kind = op\xffenai\n}\n"))
    assert cli.main(["fmt", "-"]) == cli.EXIT_PROBLEMS
    assert capsys.readouterr().err.startswith("<stdin>:2:12: error[E002]: invalid UTF-8 byte "
                                              "0xff")
    monkeypatch.setattr(sys, "stdin", _Stdin(None))
    assert cli.main(["fmt", "-"]) == cli.EXIT_USAGE
    assert "no standard input" in capsys.readouterr().err


def test_fmt_stdin_writes_utf8_under_an_ascii_locale(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "ascii"}
    result = subprocess.run([sys.executable, "-m", "moac", "fmt", "-"], cwd=tmp_path,
                            input='model m = p "caf\u00e9"   \n'.encode(), capture_output=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == 'model m = p "caf\u00e9"\n'.encode()
