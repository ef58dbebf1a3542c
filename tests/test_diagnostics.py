"""Every diagnostic code, as a user sees it: golden files of what ``moac check`` prints.

Each case ``tests/golden/diagnostics/NAME.moa`` has a sibling ``NAME.out`` holding exactly
what ``moac check NAME.moa`` writes to stderr, run from the golden directory so paths are
relative. A subdirectory is a multi-file case: its ``main.moa`` is checked and compared with
its ``main.out``. ``MOAC_UPDATE_GOLDEN=1`` rewrites the ``.out`` files.

E003 (a file over the size limit), E006 (a file that cannot be read), E106 (imports nested
past the limit) and E311 (a pipeline derived through too many bases) are generated in a
temporary directory rather than committed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import moac
import moac.cli.main as cli
from moac.lang.codes import CODES
from moac.constants import MAX_DERIVATION_DEPTH, MAX_IMPORT_DEPTH, MAX_SOURCE_BYTES
from moac.lang.parser import get_parser, parse

GOLDEN = Path(__file__).resolve().parent / "golden" / "diagnostics"
UPDATE = os.environ.get("MOAC_UPDATE_GOLDEN", "") not in ("", "0")


def golden_cases() -> list[str]:
    """Case files relative to the golden directory: ``NAME.moa`` and ``DIR/main.moa``."""
    top = sorted(p.name for p in GOLDEN.glob("*.moa"))
    nested = sorted(f"{d.name}/main.moa" for d in GOLDEN.iterdir()
                    if d.is_dir() and (d / "main.moa").is_file())
    return top + nested


CASES = golden_cases()


def check_output(case: str, monkeypatch, capsys, cwd: Path = GOLDEN) -> tuple[int, str]:
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    code = cli.main(["check", case])
    captured = capsys.readouterr()
    assert captured.out == "", "moac check prints diagnostics to stderr only"
    return code, captured.err


@pytest.mark.parametrize("case", CASES)
def test_golden_diagnostics(case, monkeypatch, capsys):
    code, err = check_output(case, monkeypatch, capsys)
    expected_path = GOLDEN / case.replace(".moa", ".out")
    if UPDATE:
        expected_path.write_text(err, encoding="utf-8")
    assert expected_path.is_file(), f"{expected_path.name} missing: run MOAC_UPDATE_GOLDEN=1"
    assert err == expected_path.read_text(encoding="utf-8")
    assert code == 1, "every golden case has at least one error"
    assert "Traceback" not in err


def test_every_golden_output_has_a_case_and_vice_versa():
    outs = {str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.out")}
    assert outs == {c.replace(".moa", ".out") for c in CASES}


def test_golden_names_match_their_codes():
    """``E201_unknown_setting.moa`` reports E201 (a name stays honest about its content)."""
    for case in CASES:
        match = re.match(r"(E\d{3})_", case)
        if match:
            out = (GOLDEN / case.replace(".moa", ".out")).read_text(encoding="utf-8")
            assert f"error[{match.group(1)}]" in out, case


# --- generated cases: E003 and E006 -------------------------------------------------------


def generated_outputs(tmp_path: Path, monkeypatch, capsys) -> dict[str, str]:
    (tmp_path / "huge.moa").write_bytes(b"#" * (MAX_SOURCE_BYTES + 1))
    (tmp_path / "folder.moa").mkdir()
    # E106: an import chain one file deeper than the limit.
    for depth in range(MAX_IMPORT_DEPTH + 1):
        (tmp_path / f"deep{depth}.moa").write_text(f'import "deep{depth + 1}.moa"\n')
    (tmp_path / f"deep{MAX_IMPORT_DEPTH + 1}.moa").write_text("")
    # E311: a pipeline derived through one base more than the limit.
    chain = [PREAMBLE, "pipeline p0 {\n  aggregate m\n}\n"]
    chain += [f"pipeline p{i} from p{i - 1} {{\n}}\n" for i in range(1, MAX_DERIVATION_DEPTH + 2)]
    (tmp_path / "derived.moa").write_text("\n".join(chain))
    outputs = {}
    for name in ("huge.moa", "folder.moa", "missing.moa", "deep0.moa", "derived.moa"):
        code, err = check_output(name, monkeypatch, capsys, cwd=tmp_path)
        assert code == 1
        outputs[name] = err
    return outputs


def test_e003_file_too_large(tmp_path, monkeypatch, capsys):
    err = generated_outputs(tmp_path, monkeypatch, capsys)["huge.moa"]
    size = MAX_SOURCE_BYTES + 1
    # One line of '#': the diagnostic points at the first byte past the limit, on it.
    column = MAX_SOURCE_BYTES + 1
    assert err == (f"huge.moa:1:{column}: error[E003]: file is {size:,} bytes; .moa files are "
                   f"limited to {MAX_SOURCE_BYTES:,} bytes (the limit is passed here)\n"
                   f"   1 | ...{'#' * 61}...\n"
                   f"     | {' ' * 63}^\n"
                   "  = hint: split the file and use `import`\n"
                   "1 error in 1 file\n")


def test_e003_also_for_a_large_imported_file(tmp_path, monkeypatch):
    (tmp_path / "huge.moa").write_bytes(b"#" * (MAX_SOURCE_BYTES + 1))
    (tmp_path / "main.moa").write_text('import "huge.moa"\n')
    diagnostics = moac.check_file(tmp_path / "main.moa")
    assert [d.code for d in diagnostics] == ["E003"]


PREAMBLE = ('provider p {\n  kind = openai\n  base_url = "https://api.example.com/v1"\n}\n\n'
            'model m = p "org/m" {\n  price = $0.10/M\n  params = 7B\n  context = 8k\n}\n')


def test_e106_imports_nested_too_deeply(tmp_path, monkeypatch, capsys):
    err = generated_outputs(tmp_path, monkeypatch, capsys)["deep0.moa"]
    deepest = f"deep{MAX_IMPORT_DEPTH}.moa"
    assert err == (
        f"{deepest}:1:8: error[E106]: imports nest more than {MAX_IMPORT_DEPTH} files deep "
        f"(deep0.moa imports deep1.moa, which imports ... {deepest}, which imports "
        f"'deep{MAX_IMPORT_DEPTH + 1}.moa')\n"
        f'   1 | import "deep{MAX_IMPORT_DEPTH + 1}.moa"\n'
        f"     |        ^~~~~~~~~~~~\n"
        "  = hint: import the shared files from one file near the top instead of through a "
        "chain\n"
        "1 error in 1 file\n")


def test_e311_derived_through_too_many_bases(tmp_path, monkeypatch, capsys):
    err = generated_outputs(tmp_path, monkeypatch, capsys)["derived.moa"]
    top = MAX_DERIVATION_DEPTH + 1
    lines = (tmp_path / "derived.moa").read_text().splitlines()
    line = lines.index(f"pipeline p{top} from p{top - 1} {{") + 1
    assert err.startswith(
        f"derived.moa:{line}:{len(f'pipeline p{top} from ') + 1}: error[E311]: "
        f"pipeline 'p{top}' is derived through more than {MAX_DERIVATION_DEPTH} bases "
        f"('p{top}' from 'p{top - 1}' from ...)\n")
    assert err.endswith("1 error in 1 file\n")


def test_e006_file_cannot_be_read(tmp_path, monkeypatch, capsys):
    outputs = generated_outputs(tmp_path, monkeypatch, capsys)
    assert outputs["folder.moa"] == ("folder.moa: error[E006]: is a directory, not a .moa file\n"
                                     "1 error in 1 file\n")
    assert outputs["missing.moa"] == "missing.moa: error[E006]: no such file\n1 error in 1 file\n"


def test_e002_from_bytes_points_at_the_bad_byte():
    with pytest.raises(moac.MoaSyntaxError) as caught:
        moac.lang.parser.parse_bytes(b'provider p {\n  kind = op\xffenai\n}\n', "x.moa")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.code == "E002"
    assert (diagnostic.span.line, diagnostic.span.column) == (2, 12)
    assert "0xff" in diagnostic.message
    with pytest.raises(moac.MoaSyntaxError) as caught:
        moac.lang.parser.parse_bytes(b"\x00\x01\x02", "x.moa")
    assert [d.code for d in caught.value.diagnostics] == ["E002"]
    assert "NUL" in caught.value.diagnostics[0].message


def test_every_code_has_a_golden_case(tmp_path, monkeypatch, capsys):
    outputs = [(GOLDEN / c.replace(".moa", ".out")).read_text(encoding="utf-8") for c in CASES]
    outputs += generated_outputs(tmp_path, monkeypatch, capsys).values()
    seen = set(re.findall(r"error\[(E\d{3})\]", "\n".join(outputs)))
    missing = set(CODES) - seen
    unknown = seen - set(CODES)
    assert not missing, f"codes without a golden case: {sorted(missing)}"
    assert not unknown, f"golden outputs use codes not in moac.lang.codes: {sorted(unknown)}"


# --- many problems, one run ------------------------------------------------------------


def test_all_problems_of_a_file_are_reported_in_one_run():
    diagnostics = moac.check_file(GOLDEN / "multi_five_errors.moa")
    assert len(diagnostics) == 5
    assert len({d.code for d in diagnostics}) == 5
    lines = [d.span.line for d in diagnostics]
    assert lines == sorted(lines)
    assert all(d.source is not None for d in diagnostics)


def test_syntax_errors_of_every_imported_file_are_reported_together():
    diagnostics = moac.check_file(GOLDEN / "multi_syntax_files" / "main.moa")
    assert sorted((Path(d.path).name, d.code) for d in diagnostics) == [
        ("models.moa", "E001"), ("providers.moa", "E001")]


def test_diagnostics_sorted_by_path_then_line(monkeypatch):
    monkeypatch.chdir(GOLDEN)
    text = (GOLDEN / "multi_five_errors.moa").read_text()
    # The same problems in reverse order of declaration still come out by line.
    blocks = text.split("\n\n")
    reordered = "\n\n".join(blocks[:3] + blocks[3:][::-1])
    with pytest.raises(moac.MoaSemanticError) as caught:
        moac.compile_string(reordered, "r.moa")
    lines = [d.span.line for d in caught.value.diagnostics]
    assert len(lines) == 5 and lines == sorted(lines)


def test_several_bad_escapes_are_all_reported():
    text = 'provider p {\n  a = "\\q"\n  b = "\\z"\n  c = "ok\\n"\n  d = """\\w"""\n}\n'
    with pytest.raises(moac.MoaSyntaxError) as caught:
        parse(text, "e.moa")
    assert [(d.code, d.span.line) for d in caught.value.diagnostics] == [
        ("E004", 2), ("E004", 3), ("E004", 5)]


# --- syntax errors in user words ---------------------------------------------------------

BROKEN = [
    "pipeline {", "model a = ", "layer x = [a]", "pipeline p {\n layer = [a]\n}",
    "provider p {\n kind = \n}", "import", "import foo", "pipeline p from {\n}",
    "budget {\n max_usd = $1,\n}", "route r {", "pipeline p {\n aggregate\n}",
    "pipeline p {\n layer a = [b,,c]\n}", "pipeline p {\n layer a = (b)\n}",
    'model m = p "x" { a = 1 b = 2 }', "}", "]", ")", "{", "=", "env X",
    "provider p { kind = env }", "pipeline p { aggregate a fallback }",
    "pipeline p { without }", "pipeline p { layer a = b x }",
    "pipeline p { layer a = b x 3 x 4 }", "provider p {\n a = [1, [2]]\n}",
    "provider p {\n a = (1)\n}", "'hello'", "provider p {\n a: 1\n}",
    'model m = p "x" {\n a = 1\n', '"abc', '"""abc', "provider p {\n a = 1 2\n}",
    "pipeline p {\n layer a = [b] (c)\n}", "pipeline p {\n layer a = [b] (c = )\n}",
    "pipeline p {\n layer a = [b c]\n}", "pipeline p {\n aggregate a (t = 1) (x = 2)\n}",
    "@", "provider p {\n kind = openai\n} extra", "x", "model = p", "model m p \"x\"",
    "model m = p x", "pipeline p {\n layer a = [b\n aggregate b\n}", "pipeline p {\n layer\n}",
    "pipeline p {\n layer a = [b] (min_ok = 1\n}", "provider p {\n kind = openai\n\n",
    "provider p {\n\n\n", "budget\n{\n}", "import \"a.moa\" \"b.moa\"", "pipeline p {\n x = 1,\n}",
    "provider p { kind = openai } provider q { kind = openai }", "route r {\n candidates = [a b]\n}",
    "pipeline p {\n without a b\n}", "pipeline p {\n aggregate a fallback b fallback c\n}",
    "provider p {\n a = env\n}", "provider p {\n a = $\n}", "pipeline p {\n layer a = [b x]\n}",
    "provider p {\n api_key = env \"key\"\n}", "provider p {\n a = 1,\n}", "\tprovider",
]

# An all-caps word of two or more letters, as lark names terminals (RSQB, NAME, _NL, $END).
TERMINAL_NAME = re.compile(r"(?<![\w'])(\$END|_?[A-Z][A-Z_]+)(?![\w'])")


def lowercase_terminal_names() -> set[str]:
    """Terminal names that are no user word even in lower case (``rsqb``, ``quantity``)."""
    names = set()
    for terminal in get_parser().terminals:
        pattern = terminal.pattern
        if terminal.name in ("NAME", "STRING", "COMMENT"):
            continue  # "a name", "a quoted string", "a comment" are the user's words
        if pattern.type == "str" and pattern.value == terminal.name.lower():
            continue  # keywords: 'layer' is what the user types
        names.add(terminal.name.lower())
    return names | {"$end", "end_of_file"}


LOWER_TERMINALS = lowercase_terminal_names()


def syntax_error(text: str) -> moac.Diagnostic:
    with pytest.raises(moac.MoaSyntaxError) as caught:
        parse(text, "broken.moa")
    (diagnostic,) = caught.value.diagnostics
    return diagnostic


@pytest.mark.parametrize("text", BROKEN)
def test_syntax_errors_name_tokens_in_user_words(text):
    diagnostic = syntax_error(text)
    assert diagnostic.code in ("E001", "E005")
    for part in (diagnostic.message, diagnostic.hint or ""):
        # The inputs above write no all-caps word themselves, so any in the message is lark's.
        assert not TERMINAL_NAME.search(part), part
        words = set(re.findall(r"[$\w]+", part.lower()))
        assert not words & LOWER_TERMINALS, part
        assert "Token(" not in part and "<" not in part


def test_expected_tokens_are_quoted_symbols_or_words():
    diagnostic = syntax_error("pipeline p {\n layer a = [b\n aggregate b\n}")
    assert diagnostic.message == "unexpected 'aggregate'; expected '(', ',', ']' or 'x'"
    assert diagnostic.hint == "is a ']' missing before it?"
    assert syntax_error("model a = ").message == "unexpected end of file; expected a name"
    assert syntax_error("import foo").message == "unexpected 'foo'; expected a quoted string"
    assert "a new line" in syntax_error("provider p { kind = openai } x").message


def test_unterminated_long_string_points_at_its_opening_quotes():
    diagnostic = syntax_error('pipeline p {\n  system = """abc\n  def\n}\n')
    assert diagnostic.code == "E005"
    assert (diagnostic.span.line, diagnostic.span.column) == (2, 12)
    assert '"""' in diagnostic.hint
    assert syntax_error('"""abc').code == "E005"


def test_caret_sits_under_the_span():
    diagnostic = syntax_error("provider p {\n  kind: openai\n}\n")
    source_line, caret = diagnostic.render().splitlines()[1:3]
    assert source_line.index("kind:") + len("kind") == caret.index("^")


def test_tabs_do_not_shift_the_caret():
    diagnostic = syntax_error("provider p {\n\t\tkind: openai\n}\n")
    source_line, caret = diagnostic.render().splitlines()[1:3]
    assert source_line[caret.index("^")] == ":"


def test_long_string_line_continuation_in_a_crlf_file():
    lf = parse('provider p {\n  a = """one \\\n  two"""\n}\n', "lf.moa")
    crlf = parse('provider p {\r\n  a = """one \\\r\n  two"""\r\n}\r\n', "crlf.moa")
    value = crlf.items[0].settings[0].values[0].value
    assert value == lf.items[0].settings[0].values[0].value == "one   two"


def test_byte_order_mark_in_a_string_is_dropped():
    module = parse("\ufeffprovider p {\n  kind = openai\n}\n", "bom.moa")
    assert module.items[0].name.name == "p"


@pytest.mark.parametrize("text, word", [
    ("pipeline p {\n  aggregate a fallbackb\n}\n", "fallbackb"),
    ("pipeline p frombase {\n  aggregate a\n}\n", "frombase"),
    ("pipeline p {\n  layer l = [b xtra]\n  aggregate a\n}\n", "xtra"),
    ("pipeline p {\n  layer l = [b x3]\n  aggregate a\n}\n", "x3"),
])
def test_keywords_need_a_word_boundary(text, word):
    with pytest.raises(moac.MoaSyntaxError) as caught:
        parse(text, "kw.moa")
    assert f"unexpected '{word}'" in caught.value.diagnostics[0].message
