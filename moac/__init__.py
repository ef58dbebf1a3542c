"""moac: the Mixture-of-Agents compiler.

Write pipelines of LLMs as ``.moa`` files; compile them to plans; run them.

    import moac
    program = moac.compile_file("examples/moa.moa")
    plan = program.plan()            # a networkx DiGraph of typed agent calls
"""

from moac.compiler import Program, SelectionError, check_file, compile_file, compile_string
from moac.diagnostics import Diagnostic, MoaError, MoaSemanticError, MoaSyntaxError, Span
from moac.ir import CallNode, Plan, PlanError

__version__ = "0.1.0"

__all__ = [
    "CallNode", "Diagnostic", "MoaError", "MoaSemanticError", "MoaSyntaxError", "Plan",
    "PlanError", "Program", "SelectionError", "Span", "check_file", "compile_file",
    "compile_string", "__version__",
]
