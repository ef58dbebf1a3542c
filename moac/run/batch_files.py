"""The files of a batch run: prompts in (JSONL or a JSON array, AlpacaEval's and MT-Bench's
shapes), answers out (one JSON line per item, appended as each is done, compacted at the end),
and which items an answers file already holds (what a resumed run skips).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

from moac.text import json_bytes, valid_json
from moac.traces.trace import jsonl_safe, read_jsonl


class RunError(Exception):
    """A run cannot start or go on (unreadable prompts, a foreign answers file): one line."""


# --- prompts ---------------------------------------------------------------------------------

PROMPT_FIELDS = ("instruction", "prompt", "turns")


@dataclass(frozen=True)
class PromptItem:
    """One item of a batch: its id, its user turns (one, or several for MT-Bench), the
    field they came from, and the whole input record (copied into the answer line)."""
    id: str
    turns: tuple[str, ...]
    field: str
    record: dict

    @property
    def prompt(self) -> str:
        return self.turns[0]


def load_prompts(path: str) -> list[PromptItem]:
    """Prompts from JSONL or a JSON array. Each item's text is its ``instruction`` or
    ``prompt`` (AlpacaEval), or its ``turns`` (MT-Bench: answered turn by turn, each turn
    seeing the conversation so far); its id is ``id``, else ``question_id``, else its
    0-based position. A bare string is an item too."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise RunError(f"cannot read prompts from {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise RunError(f"{path}: not UTF-8 text") from None
    rows: list = []
    if text.lstrip().startswith("["):
        rows = _json(text, f"{path}: not valid JSON")
        if not isinstance(rows, list):
            raise RunError(f"{path}: not a JSON array")
    else:
        for number, line in enumerate(text.split("\n"), 1):
            if line.strip():
                rows.append(_json(line, f"{path}:{number}: not a JSON line"))
    if not rows:
        raise RunError(f"{path}: no prompts in it (expected JSON lines or a JSON array of "
                       "items with 'instruction', 'prompt' or 'turns')")
    items: list[PromptItem] = []
    seen: set[str] = set()
    for index, row in enumerate(rows):
        row = valid_json(row)  # the file's text may hold escapes no UTF-8 can encode
        if isinstance(row, str):
            row = {"prompt": row}
        if not isinstance(row, dict):
            raise RunError(f"{path}: item {index + 1} is not an object")
        field_name = next((f for f in PROMPT_FIELDS if f in row), None)
        value = row.get(field_name) if field_name else None
        turns = tuple(value) if isinstance(value, list) else (value,)
        if not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise RunError(f"{path}: item {index + 1} has no 'instruction', 'prompt' or "
                           "'turns' text")
        ident = str(row.get("id", row.get("question_id", index)))
        if ident in seen:
            raise RunError(f"{path}: item {index + 1} repeats the id {ident!r}")
        seen.add(ident)
        items.append(PromptItem(ident, turns, field_name, row))
    return items


def _json(text: str, what: str):
    """One JSON value of a prompts file, or :class:`RunError` saying where and why."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RunError(f"{what}: {error.msg} (line {error.lineno}, column {error.colno})"
                       ) from None
    except RecursionError:
        raise RunError(f"{what}: its brackets nest too deeply to read") from None


# --- answers files ----------------------------------------------------------------------------

# Fields of an answer line that moac sets (the rest are copied from the prompt's record).
_ANSWER_FIELDS = ("id", "output", "choices", "generator", "model_id", "status", "cost_usd",
                  "latency_s", "errors", "routed_to", "tflops", "run_id", "cached_usd",
                  "cached_tflops", "finish_reason")


def read_answers(path: str) -> list[dict]:
    """Every well-formed line of an answers file (a torn last line is skipped)."""
    if not os.path.exists(path):
        return []
    return [row for row in read_jsonl(path) if "id" in row]


def answered(rows: Iterable[dict], items: Iterable[PromptItem]) -> set[str]:
    """Ids of ``items`` that ``rows`` already answer: status ok, same prompt."""
    ok = {str(r["id"]): r for r in rows if r.get("status") == "ok"}
    return {item.id for item in items
            if item.id in ok and ok[item.id].get(item.field) == item.record.get(item.field)}


def compact_answers(path: str, items: Sequence[PromptItem]) -> None:
    """Rewrite ``path`` atomically with one line per id: the items' ids first, in their
    order (an ok line if there is one, else the latest), then any other ids it held."""
    rows = read_answers(path)
    if not rows:
        return
    best: dict[str, dict] = {}
    order: list[str] = []
    for row in rows:
        key = str(row["id"])
        if key not in best:
            order.append(key)
        if key not in best or row.get("status") == "ok" or best[key].get("status") != "ok":
            best[key] = row
    wanted = [item.id for item in items if item.id in best]
    rest = [key for key in order if key not in set(wanted)]
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "wb") as handle:
        for key in wanted + rest:
            handle.write(jsonl_safe(json_bytes(best[key])) + b"\n")
    os.replace(temporary, path)


def _open_append(path: str):
    """Open an answers file for appending, first cutting a torn last line (a killed run's)."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "rb+") as handle:
            data = handle.read()
            if not data.endswith(b"\n"):
                handle.truncate(data.rfind(b"\n") + 1)
    return open(path, "ab", buffering=0)
