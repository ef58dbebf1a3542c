"""moac: the Mixture-of-Agents compiler.

Write pipelines of LLMs as ``.moa`` files; compile them to plans; run them.

    import moac
    program = moac.compile_file("examples/moa.moa")
    plan = program.plan()            # a networkx DiGraph of typed agent calls
"""

from moac.compiler import Program, SelectionError, check_file, compile_file, compile_string
from moac.lang.diagnostics import Diagnostic, MoaError, MoaSemanticError, MoaSyntaxError, Span

__version__ = "0.1.0"


def __getattr__(name: str):
    # The IR pulls in networkx (~100 ms); load it only when someone asks for it.
    if name in ("CallNode", "Plan", "PlanError"):
        from moac import ir
        return getattr(ir, name)
    raise AttributeError(f"module 'moac' has no attribute {name!r}")

__all__ = [
    "CallNode", "Diagnostic", "MoaError", "MoaSemanticError", "MoaSyntaxError", "Plan",
    "PlanError", "Program", "SelectionError", "Span", "check_file", "compile_file",
    "compile_string", "__version__",
]
