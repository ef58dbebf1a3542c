"""The tree is the stages: the import rules between folders, read from the source itself.

Every module of ``moac/`` and ``planner/`` is parsed with the standard library's ``ast``, and
every import it makes (at the top, in a function, or under ``TYPE_CHECKING``) is an edge. The
rules: a folder imports only its own modules and those of lower layers (:data:`LAYERS`); only
the language stage imports lark; nothing before the run stage imports aiohttp, even
indirectly; no module imports itself back through any chain. The names the README shows are
imported from where the README says.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A unit is a folder (``moac.run``) or a top-level module (``moac.compiler``).
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"moac.constants", "moac.text"}),
    frozenset({"moac.data", "moac.traces"}),
    frozenset({"moac.lang", "moac.ir"}),
    frozenset({"planner", "moac.providers"}),
    frozenset({"moac.checks"}),
    frozenset({"moac.compiler", "moac.run"}),
    frozenset({"moac.evaluation"}),
    frozenset({"moac.serve", "moac.view"}),
    frozenset({"moac.cli"}),
    frozenset({"moac", "moac.__main__"}),    # the package's API and ``python -m moac``
)
LARK_ALLOWED = {"moac.lang"}
AIOHTTP_ALLOWED = {"moac.providers", "moac.run", "moac.evaluation", "moac.serve", "moac.view",
                   "moac.cli"}
# What `moac check` and `moac compile` load: none of it may reach aiohttp at import time.
BEFORE_RUN = {"moac.lang", "moac.ir", "moac.checks", "planner", "moac.traces",
              "moac.compiler", "moac.constants", "moac.text", "moac.data"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for top in ("moac", "planner") for p in (ROOT / top).rglob("*.py")}


def unit_of(module: str) -> str:
    """The folder (or top-level module) a module belongs to."""
    parts = module.split(".")
    if parts[0] == "planner":
        return "planner"
    if len(parts) == 1:
        return "moac"
    candidate = ".".join(parts[:2])
    return candidate


def rank(unit: str) -> int:
    for index, layer in enumerate(LAYERS):
        if unit in layer:
            return index
    raise AssertionError(f"{unit} is in no layer of tests/test_layout.py: add it to LAYERS")


def imports_of(module: str, *, top_level_only: bool = False) -> set[str]:
    """Absolute names a module imports (each ``from X import Y`` gives X, and X.Y when that
    is a module of the project)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = tree.body if top_level_only else ast.walk(tree)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    found.add(f"{base}.{alias.name}")
    return {name for name in found if name}


def project_target(name: str) -> str | None:
    """The project module an imported name resolves to (its longest known prefix)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def test_every_module_is_in_a_layer():
    for module in MODULES:
        rank(unit_of(module))


def test_folders_import_only_their_own_layer_or_lower():
    wrong = []
    for module in MODULES:
        mine = unit_of(module)
        for name in imports_of(module):
            target = project_target(name)
            if target is None or target == "moac":
                continue  # third-party, or the package's own __init__ (nothing imports it)
            theirs = unit_of(target)
            if theirs != mine and rank(theirs) >= rank(mine):
                wrong.append(f"{module} imports {target} ({theirs} is not below {mine})")
    assert not wrong, "\n".join(wrong)


def test_only_the_language_stage_imports_lark():
    wrong = [f"{m} imports {n}" for m in MODULES for n in imports_of(m)
             if n.split(".")[0] in ("lark", "interegular") and unit_of(m) not in LARK_ALLOWED]
    assert not wrong, "\n".join(wrong)


def test_nothing_before_the_run_stage_imports_aiohttp():
    direct = [f"{m} imports {n}" for m in MODULES for n in imports_of(m)
              if n.split(".")[0] == "aiohttp" and unit_of(m) not in AIOHTTP_ALLOWED]
    assert not direct, "\n".join(direct)
    # Indirectly, through imports made when a module is loaded.
    reaches: dict[str, list[str] | None] = {}

    def path_to_aiohttp(module: str, seen: frozenset[str]) -> list[str] | None:
        if module in reaches:
            return reaches[module]
        reaches[module] = None
        for name in imports_of(module, top_level_only=True):
            if name.split(".")[0] == "aiohttp":
                reaches[module] = [module, name]
                break
            target = project_target(name)
            if target and target != module and target not in seen and target != "moac":
                tail = path_to_aiohttp(target, seen | {module})
                if tail:
                    reaches[module] = [module, *tail]
                    break
        return reaches[module]

    wrong = [" -> ".join(chain) for m in MODULES if unit_of(m) in BEFORE_RUN
             for chain in [path_to_aiohttp(m, frozenset())] if chain]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph = {m: {t for n in imports_of(m) for t in [project_target(n)]
                 if t is not None and t != m and t != "moac"} for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            # A package's __init__ that re-exports its own modules is not a cycle with them.
            if target.startswith(module + "."):
                continue
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not cycles, "\n".join(cycles)


def test_the_rules_catch_what_they_forbid(tmp_path, monkeypatch):
    """The checks above can fail: a planted upward import, lark outside the language stage
    and a cycle are each found."""
    planted = {
        "moac.ir.bad": "from moac.run.executor import Executor\nimport lark\n",
        "moac.ir.loop_a": "from moac.ir.loop_b import x\n",
        "moac.ir.loop_b": "from moac.ir.loop_a import y\n",
    }
    for name, text in planted.items():
        path = tmp_path / (name.rsplit(".", 1)[1] + ".py")
        path.write_text(text)
        monkeypatch.setitem(MODULES, name, path)
    with pytest.raises(AssertionError, match="moac.ir.bad imports moac.run.executor"):
        test_folders_import_only_their_own_layer_or_lower()
    with pytest.raises(AssertionError, match="moac.ir.bad imports lark"):
        test_only_the_language_stage_imports_lark()
    with pytest.raises(AssertionError, match="moac.ir.loop_a -> moac.ir.loop_b -> moac.ir.loop_a"):
        test_no_import_cycle()


def test_check_and_compile_load_neither_aiohttp_nor_the_run_stage():
    code = ("import sys, moac\n"
            "moac.compile_file('examples/moa.moa').plan('moa').to_json()\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'aiohttp'"
            " or m.startswith('moac.run') or m.startswith('moac.providers'))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_names_the_readme_shows():
    """Every name the README's examples import or call, from where they show it."""
    import moac
    from moac.run import Delta, Runner, run_plan  # noqa: F401
    for name in ("compile_file", "compile_string", "Plan", "MoaSyntaxError",
                 "MoaSemanticError", "Program", "check_file", "CallNode", "PlanError"):
        assert getattr(moac, name) is not None
    assert moac.Plan.from_json and moac.Plan.to_json
    program = moac.compile_file(str(ROOT / "examples" / "moa.moa"))
    plan = program.plan("moa")
    call = next(iter(plan.calls()))
    assert call.id and call.model and call.sampling.temperature is not None
    assert moac.Plan.from_json(plan.to_json()).to_json() == plan.to_json()
    with pytest.raises(moac.MoaSyntaxError) as caught:
        moac.compile_string("pipeline {")
    assert caught.value.diagnostics


def test_no_product_module_or_benchmark_reads_a_fixed_machine_path():
    """Data beside the checkout is found relative to the repository, never at an absolute
    path of the machine that wrote the code."""
    wrong = []
    for folder in ("moac", "planner", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                        node.value.startswith(("/work/", "/home/", "/root/", "/tmp/")):
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not wrong, "\n".join(wrong)


def test_the_replay_data_folder_is_an_argument_with_a_default_only_where_it_exists(
        tmp_path, monkeypatch):
    from moac.evaluation import replay
    monkeypatch.delenv(replay.DATA_DIR_VARIABLE, raising=False)
    # As installed: no shared folder three levels above the module.
    monkeypatch.setattr(replay, "__file__", str(tmp_path / "site-packages" / "moac" /
                                                "evaluation" / "replay.py"))
    with pytest.raises(FileNotFoundError, match="--data-dir DIR"):
        replay.default_data_dir()
    with pytest.raises(FileNotFoundError, match="MOAC_ALPACA_EVAL_DIR"):
        replay.ReplayServer()
    monkeypatch.setenv(replay.DATA_DIR_VARIABLE, str(tmp_path / "answers"))
    assert replay.default_data_dir() == tmp_path / "answers"
    assert replay.ReplayServer(tmp_path / "elsewhere").data_dir == tmp_path / "elsewhere"
    # Beside a checkout, when the folder is there.
    monkeypatch.delenv(replay.DATA_DIR_VARIABLE)
    beside = tmp_path / "shared" / "data" / "alpaca_eval"
    beside.mkdir(parents=True)
    monkeypatch.setattr(replay, "__file__", str(tmp_path / "checkout" / "moac" /
                                                "evaluation" / "replay.py"))
    assert replay.default_data_dir() == beside.resolve()
