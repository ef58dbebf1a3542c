"""The ``moac`` command line.

Exit codes: 0 success; 1 the input has problems (diagnostics printed); 2 usage errors
(bad flags, unknown pipeline); 130 interrupted. No input, however broken, gets a Python
traceback: set ``MOAC_DEBUG=1`` to see one for an internal error.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from typing import Callable, Sequence

from moac.cli.common import (  # noqa: F401 (EXIT_* and UsageError: part of this module's API)
    EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, UsageError,
    add_budget_flags, budget_override, emit, existing_path, print_diagnostics,
    pruned_to_budget, token_count,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from moac.compiler import SelectionError
    from moac.lang.diagnostics import MoaError
    from moac.ir import PlanError
    try:
        return args.handler(args)
    except MoaError as error:
        print_diagnostics(error.diagnostics)
        return EXIT_PROBLEMS
    except (UsageError, SelectionError) as error:
        print(f"moac: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except PlanError as error:
        print(f"moac: error: {error}", file=sys.stderr)
        return EXIT_PROBLEMS
    except KeyboardInterrupt:
        print("moac: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `moac compile x.moa | head`: the reader left; that is not our failure.
        sys.stderr.close()
        return EXIT_OK
    except OSError as error:
        print(f"moac: error: {error.strerror or error}: {error.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return EXIT_PROBLEMS
    except Exception as error:  # noqa: BLE001 - the last line of defence against tracebacks
        if os.environ.get("MOAC_DEBUG"):
            raise
        print(f"moac: internal error: {type(error).__name__}: {error}\n"
              "moac: this is a bug in moac; set MOAC_DEBUG=1 for the traceback and report it",
              file=sys.stderr)
        return EXIT_INTERNAL


class _Parser(argparse.ArgumentParser):
    """argparse, with "did you mean" for a mistyped command or choice."""

    def error(self, message: str):
        found = _INVALID_CHOICE.search(message)
        if found:
            choices = re.findall(r"'([^']*)'", found.group(2))
            close = difflib.get_close_matches(found.group(1), choices, n=1, cutoff=0.6)
            if close:
                message += f"; did you mean '{close[0]}'?"
        super().error(message)


_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


def _build_parser() -> argparse.ArgumentParser:
    from moac import __version__
    parser = _Parser(
        prog="moac", description="moac, the Mixture-of-Agents compiler: check, compile and "
                                 "draw .moa pipelines.")
    parser.add_argument("--version", action="version", version=f"moac {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND",
                                     parser_class=_Parser)

    check = commands.add_parser("check", help="report every problem in .moa files")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(handler=cmd_check)

    compile_ = commands.add_parser("compile", help="print the lowered plan as JSON")
    compile_.add_argument("file", metavar="FILE")
    compile_.add_argument("--pipeline", "-p", metavar="NAME")
    compile_.add_argument("-o", "--output", metavar="PLAN.json",
                          help="write the plan here instead of standard output")
    add_budget_flags(compile_)
    compile_.set_defaults(handler=cmd_compile)

    plan = commands.add_parser("plan", help="print the Pareto frontier of a pipeline's "
                                            "sub-plans (quality against cost)")
    plan.add_argument("file", metavar="FILE")
    plan.add_argument("--pipeline", "-p", metavar="NAME")
    plan.add_argument("--plot", metavar="OUT.svg", help="also draw the frontier as SVG")
    plan.add_argument("--prompt-tokens", metavar="N",
                      help="prompt length to estimate for (default: a typical prompt)")
    plan.add_argument("--budget-mode", choices=("expected", "worst"),
                      help="estimate the expected or the worst case (default: the file's)")
    plan.set_defaults(handler=cmd_plan)

    graph = commands.add_parser("graph", help="draw a pipeline's DAG (a route's candidates)")
    graph.add_argument("file", metavar="FILE")
    graph.add_argument("--pipeline", "-p", metavar="NAME")
    graph.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    graph.add_argument("-o", "--output", metavar="FILE")
    graph.set_defaults(handler=cmd_graph)

    fmt = commands.add_parser("fmt", help="rewrite .moa files in the canonical layout")
    fmt.add_argument("files", nargs="+", metavar="FILE", help="files, or - for stdin")
    fmt.add_argument("--check", action="store_true",
                     help="change nothing; exit 1 if a file is not formatted")
    fmt.add_argument("--diff", action="store_true", help="print the changes, write nothing")
    fmt.set_defaults(handler=cmd_fmt)
    from moac.cli.run import add_run_commands
    add_run_commands(commands)
    return parser


# --- commands ----------------------------------------------------------------------------


def cmd_check(args) -> int:
    from moac.compiler import check_file
    problems = 0
    for path in args.files:
        diagnostics = check_file(path)
        print_diagnostics(diagnostics)
        problems += sum(1 for d in diagnostics if d.severity == "error")
    files = len(args.files)
    noun = "file" if files == 1 else "files"
    if problems:
        print(f"{problems} error{'s' if problems != 1 else ''} in {files} {noun}",
              file=sys.stderr)
        return EXIT_PROBLEMS
    print(f"checked {files} {noun}: no problems", file=sys.stderr)
    return EXIT_OK


def cmd_compile(args) -> int:
    from moac.compiler import compile_file
    from moac.ir.spec import RouteSpec
    program = compile_file(existing_path(args.file))
    selected = program.select(args.pipeline)
    if isinstance(selected, RouteSpec):
        # A route is not pruned: its budget bounds each query, and the router drops, query
        # by query, the candidates that cannot fit it.
        text = program.route_plan(selected.name, budget_override(args)).to_json()
    else:
        plan = pruned_to_budget(program.plan(selected.name, budget_override(args)))
        if plan is None:
            return EXIT_PROBLEMS
        text = plan.to_json()
    emit(text + "\n", args.output)
    return EXIT_OK


def cmd_plan(args) -> int:
    from moac.compiler import compile_file
    from moac.constants import ASSUMED_PROMPT_TOKENS
    from planner import MoaQualityModel, frontier, frontier_table, point_of
    tokens = ASSUMED_PROMPT_TOKENS if args.prompt_tokens is None else \
        token_count(args.prompt_tokens, "--prompt-tokens")
    program = compile_file(existing_path(args.file))
    from moac.ir.spec import RouteSpec
    if isinstance(program.select(args.pipeline), RouteSpec):
        if args.plot:
            raise UsageError("--plot draws one pipeline's frontier; plot a candidate with "
                             "--pipeline")
        sys.stdout.write(_route_table(program.route_plan(program.select(args.pipeline).name),
                                      tokens, args.budget_mode))
        return EXIT_OK
    plan = program.plan(args.pipeline)
    mode = args.budget_mode or plan.budget.mode
    quality = MoaQualityModel.of(plan)
    front = frontier(plan, tokens, mode, quality)
    named = [point_of(program.plan(name), name, tokens, mode, quality)
             for name in program.pipelines]
    sys.stdout.write(frontier_table(front, named))
    if args.plot:
        from planner.plot import svg
        emit(svg(front, named), args.plot)
    return EXIT_OK


def _route_table(route_plan, tokens: int, mode: str | None) -> str:
    """A route's candidates side by side for a prompt of ``tokens``: what the budget
    policy weighs, and which candidates can take over after shared layers."""
    from planner.report import quality_text, tflops_text
    from planner.route import assess, cost_key, shared_stages
    budget = route_plan.budget if mode is None else route_plan.budget.merged(
        type(route_plan.budget)(mode=mode))
    candidates = assess(route_plan.plans, tokens, budget)
    route = route_plan.route
    width = max(9, *(len(c.name) for c in candidates))
    lines = [f"route {route.name}: policy {', '.join(route.policies)}; {budget.mode} case, "
             f"{tokens}-token prompt",
             f"  {'candidate':<{width}}  {'quality':>7} {'cost':>9} {'latency':>8} "
             f"{'TFLOPs':>9}  fits"]
    for c in candidates:
        lines.append(f"  {c.name:<{width}}  {quality_text(c.predicted):>7} "
                     f"{'$' + format(c.estimate.usd, '.4f'):>9} "
                     f"{c.estimate.latency_s:>7.1f}s {tflops_text(c.estimate.tflops):>9}  "
                     + ("yes" if c.fits else "no: " + ", ".join(c.over)))
    unknown = sorted({m for c in candidates for m in c.assumed})
    if unknown:
        lines.append(f"  quality unknown: {', '.join(unknown)} declare"
                     f"{'s' * (len(unknown) == 1)} no quality; when a candidate that fits "
                     "rests on one, the budget policy takes the one that fits and spends the "
                     "most")
    for a in candidates:
        for b in candidates:
            shared = shared_stages(a.plan, b.plan)
            if a is not b and shared and cost_key(b) < cost_key(a):
                lines.append(f"  {b.name} can take over from {a.name} after {shared} shared "
                             f"layer{'s' if shared != 1 else ''}")
    return "\n".join(lines) + "\n"


def cmd_graph(args) -> int:
    from moac.compiler import compile_file
    from moac.ir.render import to_dot, to_mermaid
    program = compile_file(existing_path(args.file))
    plan = program.runnable(args.pipeline)  # a route draws every candidate
    render: Callable = to_dot if args.format == "dot" else to_mermaid
    emit(render(plan), args.output)
    return EXIT_OK


def cmd_fmt(args) -> int:
    from moac.lang.diagnostics import MoaError
    from moac.lang.fmt import format_source
    from moac.lang.parser import read_file
    unformatted = 0
    failed = []
    for path in args.files:
        try:
            original = _read_stdin_source() if path == "-" else read_file(path)
            formatted = format_source(original, "<stdin>" if path == "-" else path)
        except MoaError as error:
            print_diagnostics(error.diagnostics)
            failed.append(path)
            continue
        if path == "-" and not (args.check or args.diff):
            _write_utf8(formatted)
            continue
        if formatted == original:
            continue
        unformatted += 1
        if args.diff:
            _write_utf8("".join(difflib.unified_diff(
                original.splitlines(keepends=True), formatted.splitlines(keepends=True),
                f"{path} (original)", f"{path} (formatted)")))
        elif args.check:
            print(f"would reformat {path}", file=sys.stderr)
        else:
            with open(path, "w", encoding="utf-8", newline="") as handle:
                handle.write(formatted)
            print(f"reformatted {path}", file=sys.stderr)
    if failed or (unformatted and (args.check or args.diff)):
        return EXIT_PROBLEMS
    return EXIT_OK


def _read_stdin_source() -> str:
    """Standard input as ``.moa`` text: read as bytes (up to the size limit and one byte)
    and decoded as a file is, so that invalid UTF-8 is an E002 at its line and column
    (never text silently changed by formatting), and a missing stdin a usage error."""
    from moac.constants import MAX_SOURCE_BYTES
    from moac.lang.parser import decode_source
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None or sys.stdin.closed:
        raise UsageError("fmt -: there is no standard input to read")
    return decode_source(stream.read(MAX_SOURCE_BYTES + 1), "<stdin>")


def _write_utf8(text: str) -> None:
    """``text`` on standard output as UTF-8, whatever encoding the locale gives stdout: a
    .moa file is UTF-8, and formatting must not fail on its first non-ASCII letter."""
    stream = getattr(sys.stdout, "buffer", None)
    if stream is None:
        sys.stdout.write(text)
        return
    sys.stdout.flush()
    stream.write(text.encode("utf-8"))
    stream.flush()


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
