"""Front-end benchmark at the size limit: prints figures, asserts nothing.

    python bench/parse.py [--size BYTES] [--timeout S] [--only SHAPE ...] [--root CHECKOUT]

Builds the worst shapes of a ``.moa`` file that the limits let through (each as large as
:data:`moac.constants.MAX_SOURCE_BYTES` allows, or as a narrower limit of its own allows)
and measures, each in a fresh process so that one shape's garbage cannot hide another's:

- ``check``: load (read, decode, lex, parse, imports), every check pass, and the rendering
  of every diagnostic, as ``moac check`` does;
- ``fmt``: parse and format, as ``moac fmt`` does (only for shapes that parse).

``--root`` measures another checkout's moac on the same files (the shapes are built at this
checkout's limits), for a before-and-after. Each figure is wall time (and CPU time, which other load on the machine inflates less) and
the peak resident memory the stage added over the process after start-up (``ru_maxrss``). Target (issue 12, item 5): every stage linear in the file's
size with a small constant: a few seconds and a few hundred MB at worst, for 4 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if "--child" not in sys.argv:  # a child measures the moac its PYTHONPATH names (--root)
    sys.path.insert(0, str(ROOT))

from moac import constants  # noqa: E402

PREAMBLE = (
    "provider p {\n  kind = openai\n  base_url = \"http://127.0.0.1:8000/v1\"\n}\n\n"
    "model m0 = p \"org/m0\" {\n  price = $0.90/M\n  params = 7B\n  context = 128k\n}\n\n"
)


def _count(text: str) -> int:
    """Tokens of ``text`` as the limit counts them (a run of blank and comment lines is one)."""
    import moac.lang.parser as parser_module
    saved, parser_module.MAX_SOURCE_TOKENS = parser_module.MAX_SOURCE_TOKENS, 10 ** 12
    try:
        return sum(1 for _ in parser_module.get_parser().lex(text))
    finally:
        parser_module.MAX_SOURCE_TOKENS = saved


def _fill(head: str, unit, tail: str, size: int, count: int | None = None) -> str:
    """``head``, then ``unit(i)`` for i = 0, 1, ... (at most ``count`` of them) while the
    whole stays within ``size`` bytes and the token limit, then ``tail``."""
    per_unit = _count(head + unit(0) + unit(1) + tail) - _count(head + unit(0) + tail)
    tokens_left = constants.MAX_SOURCE_TOKENS - _count(head + tail)
    parts, used, index = [head], len(head.encode()) + len(tail.encode()), 0
    while count is None or index < count:
        piece = unit(index)
        cost = len(piece.encode())
        if used + cost > size or tokens_left < per_unit:
            break
        parts.append(piece)
        used += cost
        tokens_left -= per_unit
        index += 1
    parts.append(tail)
    return "".join(parts)


# Each shape: (description, builder(size) -> {relative path: text}, parses?)
def comments(size):
    return {"main.moa": _fill(PREAMBLE + "pipeline a {\n  aggregate m0\n}\n",
                              lambda i: f"# comment line {i}: nothing but words here\n", "",
                              size)}


def huge_list(size):
    # As many agents as a pipeline may have, in one list.
    head = PREAMBLE + "pipeline big {\n  max_tokens = 1\n  layer l = ["
    return {"main.moa": _fill(head, lambda i: "m0, ", "m0]\n  aggregate m0\n}\n", size,
                              count=constants.MAX_PIPELINE_AGENTS - 2)}


def huge_value_list(size):
    # A route's candidates: a list of names as long as the token limit allows, none of
    # them a pipeline (an error each, with a suggestion while the budget for them lasts).
    head = PREAMBLE + "pipeline a {\n  aggregate m0\n}\n\nroute r {\n  candidates = ["
    return {"main.moa": _fill(head, lambda i: f"c{i}, ", "a]\n}\n", size)}


def per_copy_list(size):
    copies = constants.MAX_PIPELINE_AGENTS - 1
    values = ", ".join(["0.5"] * copies)
    return {"main.moa": PREAMBLE + "pipeline big {\n  max_tokens = 1\n  layer l = [m0 x "
            f"{copies} (temperature = [{values}])]\n  aggregate m0\n}}\n"}


def long_string(size):
    head = PREAMBLE + "pipeline a {\n  system = \""
    tail = "\"\n  aggregate m0\n}\n"
    return {"main.moa": head + "x" * (size - len(head) - len(tail)) + tail}


def long_string_escapes(size):
    head = PREAMBLE + "pipeline a {\n  system = \""
    tail = "\"\n  aggregate m0\n}\n"
    return {"main.moa": head + "\\n" * ((size - len(head) - len(tail)) // 2) + tail}


def long_multiline_string(size):
    head = PREAMBLE + "pipeline a {\n  system = \"\"\"\n"
    return {"main.moa": _fill(head, lambda i: "    a line of a long prompt\n",
                              "  \"\"\"\n  aggregate m0\n}\n", size)}


def deep_brackets(size):
    head = PREAMBLE + "pipeline a {\n  max_tokens = "
    return {"main.moa": head + "[" * (size - len(head))}


def deep_parens(size):
    head = PREAMBLE + "pipeline a {\n  layer l = [m0 "
    return {"main.moa": head + "(" * (size - len(head))}


def many_blocks(size):
    return {"main.moa": _fill(PREAMBLE, lambda i: f"pipeline p{i} {{\n  aggregate m0\n}}\n\n",
                              "", size)}


def many_models(size):
    return {"main.moa": _fill(PREAMBLE, lambda i: f"model m{i + 1} = p \"x\" {{\n  price = "
                              "$1/M\n  params = 7B\n  context = 8k\n}\n", "", size)}


def many_errors(size):
    return {"main.moa": _fill(PREAMBLE, lambda i: f"pipeline p{i} {{\n  aggregate mo{i}\n}}\n",
                              "", size)}


def many_bad_escapes(size):
    return {"main.moa": _fill(PREAMBLE, lambda i: f"model x{i} = p \"bad \\q\"\n", "", size)}


def derived_prompt(size):
    # One long prompt in a base pipeline, and as many pipelines derived from it as fit:
    # each derived pipeline is checked with the base's settings.
    prompt = "{responses} " + "x" * (size // 2)
    head = (PREAMBLE + f'pipeline base {{\n  prompt = "{prompt}"\n  layer a = m0\n'
            "  layer b = m0\n  aggregate m0\n}\n")
    return {"main.moa": _fill(head, lambda i: f"pipeline d{i} from base {{\n}}\n", "", size)}


def import_chain(size):
    depth = getattr(constants, "MAX_IMPORT_DEPTH", 600)
    files = {f"f{i}.moa": f'import "f{i + 1}.moa"\n' for i in range(depth)}
    files[f"f{depth}.moa"] = PREAMBLE + "pipeline a {\n  aggregate m0\n}\n"
    files["main.moa"] = 'import "f0.moa"\n'
    return files


SHAPES = {
    "comments": ("comment lines (one every 48 bytes)", comments, True),
    "huge_list": ("one layer, one list of agents", huge_list, True),
    "huge_value_list": ("a route's list of candidates", huge_value_list, True),
    "per_copy_list": ("one agent x N with a per-copy list", per_copy_list, True),
    "long_string": ("one string literal", long_string, True),
    "string_escapes": ("one string of escapes", long_string_escapes, True),
    "long_text": ("one long string of short lines", long_multiline_string, True),
    "deep_brackets": ("nested '[' (a syntax error)", deep_brackets, False),
    "deep_parens": ("nested '(' (a syntax error)", deep_parens, False),
    "many_blocks": ("small pipelines", many_blocks, True),
    "many_models": ("small models", many_models, True),
    "many_errors": ("pipelines, each with an unknown model", many_errors, True),
    "bad_escapes": ("strings, each with a bad escape", many_bad_escapes, False),
    "derived_prompt": ("pipelines derived from one with a long prompt", derived_prompt, True),
    "import_chain": ("an import chain at the depth limit", import_chain, False),
}


def _child(shape: str, stage: str, directory: str) -> None:
    """Run one stage on ``directory/main.moa`` and print what it took as JSON."""
    import moac
    from moac.lang.fmt import format_source
    from moac.lang.parser import get_parser, read_file
    get_parser()
    path = os.path.join(directory, "main.moa")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, cpu = time.perf_counter(), time.process_time()
    if stage == "check":
        diagnostics = moac.check_file(path)
        rendered = sum(len(d.render()) for d in diagnostics)
        outcome = f"{len(diagnostics):,} diagnostics ({rendered:,} chars)"
        codes = sorted({d.code for d in diagnostics})
        if codes:
            outcome += " " + ",".join(codes[:4])
    else:
        try:
            outcome = f"{len(format_source(read_file(path), path)):,} chars out"
        except moac.MoaError as error:
            outcome = f"refused: {error.diagnostics[0].code}"
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_mb": (after - before) / 1024,
                      "outcome": outcome}))


def _measure(shape: str, stage: str, directory: str, timeout: float, root: Path) -> str:
    command = [sys.executable, __file__, "--child", shape, stage, directory]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(root)})
    except subprocess.TimeoutExpired:
        return f"> {timeout:.0f} s (stopped)"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"failed (exit {done.returncode}): {last[:80]}"
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return (f"{figures['seconds']:6.2f} s ({figures['cpu']:5.2f} s CPU) "
            f"{figures['peak_mb']:5.0f} MB  {figures['outcome']}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(*sys.argv[2:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=constants.MAX_SOURCE_BYTES,
                        help="bytes per generated file (default: the limit)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds before a stage is stopped")
    parser.add_argument("--only", nargs="*", choices=sorted(SHAPES), default=None)
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the checkout whose moac is measured (default: this one)")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; files of up to "
          f"{args.size:,} bytes; time and peak memory added, each in a fresh process; "
          f"moac from {args.root}")
    for name in args.only or SHAPES:
        description, build, parses = SHAPES[name]
        with tempfile.TemporaryDirectory() as directory:
            files = build(args.size)
            for relative, text in files.items():
                Path(directory, relative).write_text(text, encoding="utf-8")
            size = len(files["main.moa"].encode())
            total = sum(len(text.encode()) for text in files.values())
            where = f"{size:,} B" if len(files) == 1 else f"{len(files)} files, {total:,} B"
            print(f"{name:14} {description} ({where})")
            for stage in ("check", "fmt") if parses else ("check",):
                figures = _measure(name, stage, directory, args.timeout, args.root)
                print(f"  {stage:5} {figures}", flush=True)


if __name__ == "__main__":
    main()
