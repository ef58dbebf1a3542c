"""A replay provider: a real local OpenAI-compatible server that answers with RECORDED answers.

``POST /v1/chat/completions`` (``aiohttp.web``, streamed as server-sent events or not) answers a
known model and instruction with that model's recorded answer from AlpacaEval's
``model_outputs/*.json`` (JSON arrays of ``{"instruction", "output", "generator", ...}``)::

    async with ReplayServer(data_dir) as server:      # 127.0.0.1, a free port (port=0)
        ... requests to server.url ("http://127.0.0.1:PORT/v1") ...
        server.requests                                # requests served so far (any outcome)

Which answer:

- The model: ``models`` maps moac model ids to files in ``model_outputs`` (default
  :data:`DEFAULT_MODELS`, the paper's models). A file's stem (``"Together-MoA"``) is a model id
  too. A model mapped to ``None`` (WizardLM-2: no file) or unknown answers 404 "model not
  recorded", unless ``fallback`` names a recorded model id whose answers stand in.
- The instruction: the text of a user message, whitespace-stripped, equal to a recorded
  instruction; else the longest recorded instruction found inside a user message. User
  messages are tried last to first. A system message (an aggregate-and-synthesize prompt
  holding earlier answers, :data:`moac.constants.DEFAULT_AGGREGATE_PROMPT`) is ignored: an
  aggregator gets the model's recorded answer to the instruction, as a proposer does.
  No match: 404 with an OpenAI-style error body.
- ``max_tokens``: the answer is cut to ``max_tokens * 4`` characters, ``finish_reason``
  ``"length"``; otherwise ``"stop"``.
- ``usage`` is an ESTIMATE, not a tokenizer count: prompt tokens = ceil(characters of all message
  text / 4), completion tokens = ceil(characters of the answer sent / 4). Streams send it in a
  final chunk with ``choices: []`` when ``stream_options.include_usage`` is set.

Recorded answers are loaded lazily (a model's file on its first request, off the event loop)
and cached per process: :func:`load_outputs` / :func:`load_file`.

From a shell: ``python -m moac.evaluation.replay --port 8000 [--data-dir DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

from aiohttp import web

CHARS_PER_TOKEN = 4  # the usage estimate: characters over 4, rounded up
STREAM_CHUNK_CHARS = 64  # characters per streamed delta

# moac model id -> file in model_outputs (None: the paper's model has no recorded answers).
DEFAULT_MODELS: dict[str, str | None] = {
    "Qwen/Qwen1.5-110B-Chat": "Qwen1.5-110B-Chat.json",
    "Qwen/Qwen1.5-72B-Chat": "Qwen1.5-72B-Chat.json",
    "meta-llama/Llama-3-70b-chat-hf": "Meta-Llama-3-70B-Instruct.json",
    "mistralai/Mixtral-8x22B-Instruct-v0.1": "Mixtral-8x22B-Instruct-v0.1.json",
    "databricks/dbrx-instruct": "dbrx-instruct.json",
    "gpt-4o-2024-05-13": "gpt-4o-2024-05-13.json",
    "gpt-4o": "gpt-4o-2024-05-13.json",
    "gpt-4-turbo-2024-04-09": "gpt-4-turbo-2024-04-09.json",
    "microsoft/WizardLM-2-8x22B": None,
}


DATA_DIR_VARIABLE = "MOAC_ALPACA_EVAL_DIR"


def default_data_dir() -> Path:
    """Where recorded answers are when no folder is given: ``$MOAC_ALPACA_EVAL_DIR``, else
    ``shared/data/alpaca_eval`` beside a source checkout of moac when that folder exists.
    An installed moac has no such folder: :class:`FileNotFoundError` says what to pass."""
    configured = os.environ.get(DATA_DIR_VARIABLE)
    if configured:
        return Path(configured)
    # moac/evaluation/replay.py -> the checkout -> the folder beside it
    beside = Path(__file__).resolve().parents[3] / "shared" / "data" / "alpaca_eval"
    if beside.is_dir():
        return beside
    raise FileNotFoundError(
        "no recorded answers: pass the folder of AlpacaEval's model_outputs (--data-dir DIR, "
        f"or ReplayServer(data_dir)) or set {DATA_DIR_VARIABLE}")


def _outputs_dir(data_dir: str | Path) -> Path:
    """Accept the ``alpaca_eval`` folder or its ``model_outputs`` folder."""
    path = Path(data_dir)
    return path / "model_outputs" if (path / "model_outputs").is_dir() else path


@functools.lru_cache(maxsize=None)
def _load_path(path: Path) -> dict[str, str]:
    records = json.loads(path.read_text(encoding="utf-8"))
    return {str(r["instruction"]).strip(): str(r["output"]) for r in records}


def load_file(data_dir: str | Path, filename: str) -> dict[str, str]:
    """One file's ``{instruction (stripped): answer}``, read once per process."""
    return _load_path((_outputs_dir(data_dir) / filename).resolve())


def load_outputs(data_dir: str | Path,
                 models: Mapping[str, str | None] | None = None) -> dict[str, dict[str, str]]:
    """``{model_id: {instruction: answer}}`` for every file in ``model_outputs`` (keyed by its
    stem) and every model of ``models`` (default :data:`DEFAULT_MODELS`) whose file exists.
    Each file is read once per process (cached); the dicts are shared, do not mutate them."""
    directory = _outputs_dir(data_dir)
    out = {p.stem: _load_path(p.resolve()) for p in sorted(directory.glob("*.json"))}
    for model_id, filename in (DEFAULT_MODELS if models is None else models).items():
        if filename is not None and (directory / filename).is_file():
            out[model_id] = load_file(directory, filename)
    return out


def _estimate(chars: int) -> int:
    return math.ceil(chars / CHARS_PER_TOKEN)


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def find_instruction(messages: Any, recorded: Mapping[str, str]) -> str | None:
    """The recorded instruction the user messages ask (see the module docstring), or None."""
    users = [_text(m.get("content")) for m in messages
             if isinstance(m, dict) and m.get("role") == "user"]
    for text in reversed(users):
        if text.strip() in recorded:
            return text.strip()
    for text in reversed(users):
        inside = [ins for ins in recorded if ins and ins in text]
        if inside:
            return max(inside, key=len)
    return None


def _error(status: int, message: str, type_: str, code: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, "param": None,
                                        "code": code}}, status=status)


class ReplayServer:
    """See the module docstring. ``models`` maps model ids to files (``None``: not recorded);
    ``fallback`` is a recorded model id answering for models without a file (None: 404)."""

    def __init__(self, data_dir: str | Path | None = None, *,
                 models: Mapping[str, str | None] | None = None, fallback: str | None = None,
                 host: str = "127.0.0.1", port: int = 0,
                 chunk_chars: int = STREAM_CHUNK_CHARS) -> None:
        self.data_dir = _outputs_dir(default_data_dir() if data_dir is None else data_dir)
        self.models: dict[str, str | None] = dict(DEFAULT_MODELS if models is None else models)
        self.fallback = fallback
        self.host, self.port = host, port
        self.chunk_chars = max(1, chunk_chars)
        self.requests = 0  # requests received, whatever their outcome
        self.misses = 0    # requests answered with an error
        self._runner: web.AppRunner | None = None
        self._lock = asyncio.Lock()
        self._loaded: dict[str, dict[str, str]] = {}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _file(self, model: str) -> str | None:
        """The file recording ``model``, or None."""
        if model in self.models:
            filename = self.models[model]
        else:
            filename = f"{model}.json" if "/" not in model and "\\" not in model else None
        if filename is not None and (self.data_dir / filename).is_file():
            return filename
        return None

    async def answers(self, model: str) -> dict[str, str] | None:
        """``model``'s recorded ``{instruction: answer}`` (its fallback's if it has no file),
        or None; the file is read on first use, off the event loop."""
        filename = self._file(model)
        if filename is None and self.fallback is not None and self.fallback != model:
            filename = self._file(self.fallback)
        if filename is None:
            return None
        if filename not in self._loaded:
            async with self._lock:  # one read per file, even under concurrent requests
                if filename not in self._loaded:
                    self._loaded[filename] = await asyncio.to_thread(load_file, self.data_dir,
                                                                     filename)
        return self._loaded[filename]

    async def start(self) -> "ReplayServer":
        if not self.data_dir.is_dir():
            raise FileNotFoundError(f"no recorded answers at {self.data_dir}")
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_get("/v1/models", self._list_models)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5,
                                     access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "ReplayServer":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def _list_models(self, request: web.Request) -> web.Response:
        ids = [m for m in self.models if self._file(m)] + [p.stem for p in
                                                           sorted(self.data_dir.glob("*.json"))]
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "replay"} for m in dict.fromkeys(ids)]})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        response = await self._answer(request)
        if response.status >= 400:
            self.misses += 1
        return response

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            return _error(400, "expected a JSON body with a non-empty 'messages' list",
                          "invalid_request_error", "invalid_request")
        model = str(body.get("model"))
        recorded = await self.answers(model)
        if recorded is None:
            return _error(404, f"model not recorded: {model!r} has no recorded answers in "
                          f"{self.data_dir} (and no fallback)", "invalid_request_error",
                          "model_not_found")
        instruction = find_instruction(messages, recorded)
        if instruction is None:
            return _error(404, f"instruction not recorded for model {model!r}: no user message "
                          "holds one of its recorded instructions", "invalid_request_error",
                          "instruction_not_found")
        answer, finish = recorded[instruction], "stop"
        max_tokens = body.get("max_tokens")
        if isinstance(max_tokens, int) and max_tokens >= 0 \
                and max_tokens * CHARS_PER_TOKEN < len(answer):
            answer, finish = answer[:max_tokens * CHARS_PER_TOKEN], "length"
        prompt_chars = sum(len(_text(m.get("content"))) for m in messages if isinstance(m, dict))
        usage = {"prompt_tokens": _estimate(prompt_chars), "completion_tokens": _estimate(len(answer))}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": f"chatcmpl-replay-{self.requests}", "created": int(time.time()),
                "model": model, "system_fingerprint": "replay"}
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(request, base, answer, finish,
                                      usage if include_usage else None)
        return web.json_response({**base, "object": "chat.completion", "choices": [
            {"index": 0, "finish_reason": finish,
             "message": {"role": "assistant", "content": answer}}], "usage": usage},
            dumps=lambda o: json.dumps(o, ensure_ascii=False))

    async def _stream(self, request: web.Request, base: dict, answer: str, finish: str,
                      usage: dict | None) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def event(obj: Any) -> None:
            await response.write(f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode())

        def chunk(delta: dict, finish_reason: str | None = None) -> dict:
            return {**base, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish_reason}]}

        await event(chunk({"role": "assistant", "content": ""}))
        for i in range(0, len(answer), self.chunk_chars):
            await event(chunk({"content": answer[i:i + self.chunk_chars]}))
        await event(chunk({}, finish))
        if usage is not None:
            await event({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def _serve(args: argparse.Namespace) -> None:
    async with ReplayServer(args.data_dir, host=args.host, port=args.port,
                            fallback=args.fallback) as server:
        print(f"replaying {server.data_dir} at {server.url}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m moac.evaluation.replay", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=None,
                        help=f"alpaca_eval folder (default: ${DATA_DIR_VARIABLE}, else "
                             "shared/data/alpaca_eval beside a checkout, when it exists)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--fallback", default=None, help="a recorded model id answering for unrecorded models")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except FileNotFoundError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
