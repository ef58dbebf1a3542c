"""Load a ``.moa`` file and everything it imports, once each, in dependency order.

Imports resolve relative to the importing file. A diamond (two files importing a third) loads
the third once; a cycle is an error at the import that closes it. Syntax errors of every
file reached are collected before giving up, so one run shows them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from moac.lang import ast
from moac.lang.diagnostics import Diagnostic, MoaSyntaxError
from moac.lang.parser import parse, read_file


@dataclass
class Workspace:
    """The modules of one compilation, imports before the files that import them."""

    root: str
    modules: list[ast.Module] = field(default_factory=list)
    # For each module path, the paths it imports directly (resolved, in source order).
    imports: dict[str, list[str]] = field(default_factory=dict)

    def sources(self) -> dict[str, str]:
        return {m.path: m.source for m in self.modules}

    @property
    def root_module(self) -> ast.Module:
        return next(m for m in self.modules if m.path == self.root)


def load(path: str | os.PathLike | None = None, *, text: str | None = None,
         name: str = "<string>") -> tuple[Workspace, list[Diagnostic]]:
    """Load a root file (or ``text``, whose imports resolve from the current directory).

    Returns the workspace and the import and syntax diagnostics found; the workspace holds
    every module that parsed.
    """
    loader = _Loader()
    if text is not None:
        root = name
        loader.visit_text(text, name, base_dir=os.getcwd(), via=None)
    else:
        root = os.path.normpath(str(path))
        loader.visit_path(root, via=None)
    return Workspace(root, loader.modules, loader.imports), loader.diagnostics


class _Loader:
    def __init__(self) -> None:
        self.modules: list[ast.Module] = []
        self.imports: dict[str, list[str]] = {}
        self.diagnostics: list[Diagnostic] = []
        self._done: dict[str, str] = {}  # real path -> display path
        self._stack: list[str] = []  # real paths being loaded, for cycle detection
        self._display: dict[str, str] = {}  # real path -> display path

    def visit_path(self, display: str, via: tuple[ast.Import, str, str] | None) -> str | None:
        real = os.path.realpath(display)
        if real in self._done:
            return self._done[real]
        if real in self._stack:
            assert via is not None  # the root cannot be on the stack before it is visited
            node, importer, _ = via
            chain = [self._display_of(p) for p in self._stack[self._stack.index(real):]]
            self.diagnostics.append(Diagnostic(
                "E104", "import cycle: " + " -> ".join(chain + [display]), importer,
                node.path.span, hint="move the shared declarations into a file both import"))
            return None
        if via is not None and not os.path.isfile(real):
            node, importer, _ = via
            self.diagnostics.append(Diagnostic(
                "E103", f"imported file '{node.path.value}' not found (looked for {display})",
                importer, node.path.span,
                hint="import paths are relative to the importing file"))
            return None
        try:
            text = read_file(display)
        except MoaSyntaxError as error:
            self.diagnostics.extend(error.diagnostics)
            return None
        self._stack.append(real)
        self._display[real] = display
        self.visit_text(text, display, base_dir=os.path.dirname(display), via=via)
        self._stack.pop()
        self._done[real] = display
        return display

    def _display_of(self, real: str) -> str:
        return self._display.get(real, real)

    def visit_text(self, text: str, display: str, base_dir: str, via) -> None:
        try:
            module = parse(text, display)
        except MoaSyntaxError as error:
            self.diagnostics.extend(error.diagnostics)
            return
        children: list[str] = []
        for item in module.items:
            if isinstance(item, ast.Import):
                target = os.path.normpath(os.path.join(base_dir, item.path.value))
                loaded = self.visit_path(target, (item, display, base_dir))
                if loaded is not None:
                    children.append(loaded)
        self.imports[display] = children
        self.modules.append(module)
