"""Reading a router file (``moac fit-router``'s output) without numpy or the planner, so
that ``moac check`` can verify a route's ``router`` at compile time and stay fast.

:func:`read_router_file` returns the file's JSON object once it is known to be a moac router
naming two pipelines; :class:`planner.learned.LearnedRouter` builds the model from it.
"""

from __future__ import annotations

import json
from typing import Any

FORMAT = "moac-router"


class RouterFileError(ValueError):
    """A router file that cannot be read or is not one ``moac fit-router`` wrote."""


def read_router_file(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as error:
        raise RouterFileError(f"cannot read {path}: {error.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RouterFileError(f"{path} is not JSON") from None
    return check_router_data(data, path)


def check_router_data(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RouterFileError(f"{where} is not a moac router (no \"format\": \"{FORMAT}\")")
    if not (isinstance(data.get("larger"), str) and isinstance(data.get("smaller"), str)):
        raise RouterFileError(f"{where} is malformed: it names no larger and smaller pipeline")
    return data
