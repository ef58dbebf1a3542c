"""Load a ``.moa`` file and everything it imports, once each, in dependency order.

Imports resolve relative to the importing file. A diamond (two files importing a third) loads
the third once; a cycle is an error at the import that closes it. Syntax errors of every
file reached are collected before giving up, so one run shows them all.

An import names a ``.moa`` file: a path that is missing (E103), a directory, a device, a pipe
or any other file (E107), one that cannot be read (E006) or is over a size limit (E003) is
reported at the ``import`` that names it, never by quoting what is there. Imports nest at
most :data:`~moac.constants.MAX_IMPORT_DEPTH` deep (E106); the files are walked with a loop
and a stack of their own, so no depth of imports can exhaust Python's.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Iterator

from moac.constants import MAX_IMPORT_DEPTH
from moac.lang import ast
from moac.lang.diagnostics import Diagnostic, MoaSyntaxError
from moac.lang.parser import decode_source, parse, read_source_bytes

SUFFIX = ".moa"


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
        loader.run(_Frame(name, None, _parsed(loader, text, name), os.getcwd()))
    else:
        root = os.path.normpath(str(path))
        loader.run(loader.open_root(root))
    return Workspace(root, loader.modules, loader.imports), loader.diagnostics


def _parsed(loader: "_Loader", text: str, display: str) -> ast.Module | None:
    try:
        return parse(text, display)
    except MoaSyntaxError as error:
        loader.diagnostics.extend(error.diagnostics)
        return None


def _real(path: str) -> str:
    """The path with its links resolved: what identifies a file across imports."""
    try:
        return os.path.realpath(path)
    except ValueError:  # a NUL in it: reading it will say so
        return path


@dataclass
class _Frame:
    """A file being loaded: its imports are visited one by one before it is done."""

    display: str
    real: str | None  # None for text given directly
    module: ast.Module | None
    base_dir: str
    children: list[str] = field(default_factory=list)
    pending: Iterator[ast.Import] = field(default_factory=lambda: iter(()))

    def __post_init__(self) -> None:
        if self.module is not None:
            self.pending = (item for item in self.module.items if isinstance(item, ast.Import))


class _Loader:
    def __init__(self) -> None:
        self.modules: list[ast.Module] = []
        self.imports: dict[str, list[str]] = {}
        self.diagnostics: list[Diagnostic] = []
        self._done: dict[str, str] = {}  # real path -> display path
        # Real paths that could not be loaded -> why, to say again at each import of one
        # (None: the file's own diagnostics, reported once).
        self._failed: dict[str, tuple[str, str] | None] = {}
        self._stack: list[_Frame] = []
        self._on_stack: dict[str, int] = {}  # real path -> its index in _stack

    def open_root(self, display: str) -> _Frame | None:
        real = _real(display)
        try:
            data, size = read_source_bytes(display)
            module = parse(decode_source(data, display, size), display)
        except MoaSyntaxError as error:
            self.diagnostics.extend(error.diagnostics)
            return None
        return _Frame(display, real, module, os.path.dirname(display))

    def run(self, root: _Frame | None) -> None:
        if root is None:
            return
        self._push(root)
        while self._stack:
            frame = self._stack[-1]
            node = next(frame.pending, None)
            if node is None:
                self._finish()
                continue
            target = os.path.normpath(os.path.join(frame.base_dir, node.path.value))
            loaded = self._visit(target, node, frame)
            if loaded is not None:
                frame.children.append(loaded)

    def _push(self, frame: _Frame) -> None:
        if frame.real is not None:
            self._on_stack[frame.real] = len(self._stack)
        self._stack.append(frame)

    def _finish(self) -> None:
        frame = self._stack.pop()
        if frame.real is not None:
            del self._on_stack[frame.real]
            self._done[frame.real] = frame.display
        if frame.module is not None:
            self.imports[frame.display] = frame.children
            self.modules.append(frame.module)
        if self._stack and frame.module is not None:
            self._stack[-1].children.append(frame.display)

    def _visit(self, display: str, node: ast.Import, importer: _Frame) -> str | None:
        """The display path of an import already loaded; None when it is pushed to be
        loaded now (its importer gets it when it is done) or cannot be (reported)."""
        real = _real(display)
        if real in self._done:
            return self._done[real]
        if real in self._on_stack:
            chain = [f.display for f in self._stack[self._on_stack[real]:]]
            self._at_import("E104", "import cycle: " + " -> ".join(chain + [display]), node,
                            importer, hint="move the shared declarations into a file both "
                                           "import")
            return None
        if real in self._failed:
            reason = self._failed[real]
            if reason is not None:
                self._at_import(*reason, node, importer)
            return None
        if len(self._stack) > MAX_IMPORT_DEPTH:
            first = self._stack[0].display
            self._at_import(
                "E106", f"imports nest more than {MAX_IMPORT_DEPTH} files deep ({first} "
                f"imports {self._stack[1].display}, which imports ... {importer.display}, "
                f"which imports {node.path.value!r})", node, importer,
                hint="import the shared files from one file near the top instead of through "
                     "a chain")
            return None
        reason = self._cannot_import(display, node)
        module = None
        if reason is None:
            try:
                data, size = read_source_bytes(display)
                module = parse(decode_source(data, display, size), display)
            except MoaSyntaxError as error:
                reason = self._pointed(error, node)
                if reason is None:
                    self.diagnostics.extend(error.diagnostics)
        if module is None:
            self._failed[real] = reason
            if reason is not None:
                self._at_import(*reason, node, importer)
            return None
        self._push(_Frame(display, real, module, os.path.dirname(display)))
        return None

    def _cannot_import(self, display: str, node: ast.Import) -> tuple[str, str] | None:
        """Why nothing at ``display`` can be imported, as (code, message); None if it is a
        regular file named ``.moa`` (which may still fail to read or parse)."""
        named = repr(node.path.value)
        try:
            mode = os.stat(display).st_mode
        except FileNotFoundError:
            return "E103", f"imported file {named} not found (looked for {display})"
        except (OSError, ValueError) as error:  # ValueError: a NUL in the path
            return "E006", f"imported file {named} cannot be read: " \
                           f"{getattr(error, 'strerror', None) or error}"
        if stat.S_ISDIR(mode):
            return "E107", f"imported {named} is a directory, not a .moa file"
        if not stat.S_ISREG(mode):
            return "E107", f"imported {named} is not a regular file (a device, a pipe or a " \
                           "socket), not a .moa file"
        if not display.lower().endswith(SUFFIX):
            return "E107", f"imported {named} is not a .moa file: only .moa files can be " \
                           "imported"
        return None

    @staticmethod
    def _pointed(error: MoaSyntaxError, node: ast.Import) -> tuple[str, str] | None:
        """A read failure or a size limit of an imported file, said at the import (the
        size of a file is the importer's concern); None for the file's own syntax errors,
        which are said where they are."""
        first = error.diagnostics[0]
        named = f"imported file {node.path.value!r}"
        if first.code == "E006":
            return first.code, f"{named}: {first.message}"
        if first.code != "E003":
            return None
        # "file is N bytes; ..." or "file has more than N tokens ...; ..."
        message = named + first.message.removeprefix("file").replace(
            " (the limit is passed here)", "")
        if "tokens" in message and first.span is not None:
            message += f" (passed at {first.path}:{first.span.line}:{first.span.column})"
        return first.code, message

    def _at_import(self, code: str, message: str, node: ast.Import, importer: _Frame, *,
                   hint: str | None = None) -> None:
        if hint is None and code == "E103":
            hint = "import paths are relative to the importing file"
        if hint is None and code == "E003":
            hint = "split the file and use `import`"
        self.diagnostics.append(Diagnostic(code, message, importer.display, node.path.span,
                                           hint=hint))
