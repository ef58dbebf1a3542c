"""The ``moac`` command line.

Exit codes: 0 success; 1 the input has problems (diagnostics printed); 2 usage errors
(bad flags, unknown pipeline); 130 interrupted. No input, however broken, gets a Python
traceback: set ``MOAC_DEBUG=1`` to see one for an internal error.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from typing import Callable, Sequence

EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 70, 130


class UsageError(Exception):
    """A command-line mistake: reported in one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from moac.compiler import SelectionError
    from moac.diagnostics import MoaError
    from moac.ir import PlanError
    try:
        return args.handler(args)
    except MoaError as error:
        _print_diagnostics(error.diagnostics)
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


def _build_parser() -> argparse.ArgumentParser:
    from moac import __version__
    parser = argparse.ArgumentParser(
        prog="moac", description="moac, the Mixture-of-Agents compiler: check, compile and "
                                 "draw .moa pipelines.")
    parser.add_argument("--version", action="version", version=f"moac {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    check = commands.add_parser("check", help="report every problem in .moa files")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(handler=cmd_check)

    compile_ = commands.add_parser("compile", help="print the lowered plan as JSON")
    compile_.add_argument("file", metavar="FILE")
    compile_.add_argument("--pipeline", "-p", metavar="NAME")
    compile_.add_argument("-o", "--output", metavar="PLAN.json",
                          help="write the plan here instead of standard output")
    compile_.set_defaults(handler=cmd_compile)

    graph = commands.add_parser("graph", help="draw a pipeline's DAG")
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
    return parser


# --- commands ----------------------------------------------------------------------------


def cmd_check(args) -> int:
    from moac.compiler import check_file
    problems = 0
    for path in args.files:
        diagnostics = check_file(path)
        _print_diagnostics(diagnostics)
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
    program = compile_file(_existing(args.file))
    selected = program.select(args.pipeline)
    if selected.__class__.__name__ == "RouteSpec":
        import json
        plans = program.route_plans(selected.name)
        text = json.dumps({"format": "moac-route", "route": selected.model_dump(mode="json"),
                           "candidates": {k: p.to_dict() for k, p in plans.items()}},
                          indent=2, ensure_ascii=False)
    else:
        text = program.plan(selected.name).to_json()
    _emit(text + "\n", args.output)
    return EXIT_OK


def cmd_graph(args) -> int:
    from moac.compiler import compile_file
    from moac.render import to_dot, to_mermaid
    program = compile_file(_existing(args.file))
    plan = program.plan(args.pipeline)
    render: Callable = to_dot if args.format == "dot" else to_mermaid
    _emit(render(plan), args.output)
    return EXIT_OK


def cmd_fmt(args) -> int:
    from moac.diagnostics import MoaError
    from moac.fmt import format_source
    from moac.parser import decode_source, read_file
    unformatted = 0
    failed = []
    for path in args.files:
        try:
            original = decode_source(sys.stdin.buffer.read(), "<stdin>") if path == "-" \
                else read_file(path)
            formatted = format_source(original, "<stdin>" if path == "-" else path)
        except MoaError as error:
            _print_diagnostics(error.diagnostics)
            failed.append(path)
            continue
        if path == "-" and not (args.check or args.diff):
            sys.stdout.write(formatted)
            continue
        if formatted == original:
            continue
        unformatted += 1
        if args.diff:
            sys.stdout.writelines(difflib.unified_diff(
                original.splitlines(keepends=True), formatted.splitlines(keepends=True),
                f"{path} (original)", f"{path} (formatted)"))
        elif args.check:
            print(f"would reformat {path}", file=sys.stderr)
        else:
            with open(path, "w", encoding="utf-8", newline="") as handle:
                handle.write(formatted)
            print(f"reformatted {path}", file=sys.stderr)
    if failed or (unformatted and (args.check or args.diff)):
        return EXIT_PROBLEMS
    return EXIT_OK


# --- helpers -------------------------------------------------------------------------------


def _existing(path: str) -> str:
    if not os.path.exists(path):
        raise UsageError(f"no such file: {path}")
    return path


def _emit(text: str, output: str | None) -> None:
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)


def _print_diagnostics(diagnostics) -> None:
    for diagnostic in diagnostics:
        print(diagnostic.render(), file=sys.stderr)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
