"""Answers that are not answers (issue 21): an empty or whitespace answer, or one a content
filter stopped, is a failed attempt, named, retried as the policy says and handed to the
fallback; it never meets a quorum, is never read by a later stage and is never the answer of
an ``ok`` query. An answer cut by its ``max_tokens`` counts, marked as cut for the aggregator,
and a cut final answer is flagged in the result, the summary line, the trace and the answers
file. Against the real fake server (tests/fake_openai.py), streamed and not streamed.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import re
import sqlite3
from dataclasses import replace

import pytest
from fake_openai import NOT_ANSWERS, Behavior, FakeOpenAI, expected_text, serve_in_thread
from test_providers import MESSAGES, Harness, request, run

import moac
import moac.cli.main as cli
from moac.constants import DEFAULT_AGGREGATE_PROMPT
from moac.ir.prompts import (
    CUT_BY_LENGTH, SHORTENED, input_max_tokens, messages_max_tokens, render_template,
    text_max_tokens,
)
from moac.providers import ContentFiltered, EmptyAnswer, RetryPolicy, decide
from moac.run import Runner, summary_line
from moac.run.cache import ResponseCache, request_key
from moac.providers.openai import CallResult, Usage
from moac.traces.trace import read_trace

KEY = "sk-test-answers-0123456789abcdef"
ENV = {"FAKE_OPENAI_KEY": KEY}
PROMPT = "Name a prime number."
GOOD = ("good", "good2", "fb")
EMPTY = ("blank", "spaces")         # EmptyAnswer
FILTERED = ("filtered", "refused")  # ContentFiltered
BAD = EMPTY + FILTERED
ERROR_OF = {"blank": EmptyAnswer, "spaces": EmptyAnswer, "filtered": ContentFiltered,
            "refused": ContentFiltered}


def source(url: str, body: str, *, retries: int = 0) -> str:
    """A provider at ``url``, one model per fake model id (NOT_ANSWERS and GOOD), and
    ``pipeline p { body }``."""
    models = "".join(f'model {m} = p "{m}" {{\n  price = $1.00/M\n  params = 10B\n'
                     f'  context = 32k\n}}\n' for m in (*NOT_ANSWERS, *GOOD))
    return (f'provider p {{\n  kind = openai\n  base_url = "{url}"\n'
            f'  api_key = env FAKE_OPENAI_KEY\n  max_retries = {retries}\n  parallel = 16\n}}\n'
            f"{models}pipeline p {{\n  max_tokens = 100\n{body}\n}}\n")


def user(prompt: str = PROMPT) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def reading(answers: list[str], notes=(), prompt: str = PROMPT) -> list[dict]:
    """The messages of an agent aggregating ``answers`` (default template, no system)."""
    return [{"role": "system", "content": render_template(DEFAULT_AGGREGATE_PROMPT, answers,
                                                          notes)}] + user(prompt)


def serve(server: FakeOpenAI, streamed: bool) -> None:
    """Every NOT_ANSWERS model answers as it says; not streamed: as one JSON body even to a
    stream request (as some servers do)."""
    for model, behavior in NOT_ANSWERS.items():
        server.set_default(behavior if streamed else replace(behavior, ignore_stream=True),
                           model=model)


class Ran:
    def __init__(self, result, requests, records, events):
        self.result, self.requests, self.records, self.events = result, requests, records, \
            events

    def asked(self, model: str) -> list:
        return [r for r in self.requests if r.body["model"] == model]

    def calls(self, node: str) -> list[dict]:
        return [r for r in self.records if r["type"] == "call" and r["node"] == node]

    @property
    def query(self) -> dict:
        return next(r for r in self.records if r["type"] == "query")


def run_pipeline(body: str, tmp_path, *, streamed: bool = True, retries: int = 0,
                 script: dict | None = None) -> Ran:
    """Answer PROMPT with ``pipeline p { body }`` against a fresh fake server; ``script``
    queues behaviors per model before the defaults."""
    trace = tmp_path / "trace.jsonl"

    async def main():
        async with FakeOpenAI(api_key=KEY) as server:
            serve(server, streamed)
            for model, behaviors in (script or {}).items():
                server.script(*behaviors, model=model)
            plan = moac.compile_string(source(server.url, body, retries=retries)).plan("p")
            events: list = []
            async with Runner(plan, environ=ENV, trace_path=str(trace)) as runner:
                result = await runner.run(
                    PROMPT, on_delta=lambda t: events.append(("delta", t)),
                    on_restart=lambda node, why: events.append(("restart", node, why)))
            return result, list(server.requests), events

    result, requests, events = asyncio.run(main())
    return Ran(result, requests, read_trace(trace), events)


def streamed_text(events) -> str:
    """What a reader of the stream keeps: the text after the last restart."""
    starts = [i for i, e in enumerate(events) if e[0] == "restart"]
    after = events[starts[-1] + 1:] if starts else events
    return "".join(e[1] for e in after if e[0] == "delta")


# --- the client: named, retried as the policy says ----------------------------------------

@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("model", EMPTY)
def test_an_empty_answer_is_a_failed_attempt_and_is_retried(stream, model):
    async def test(h: Harness):
        h.server.script(NOT_ANSWERS[model], Behavior(), model="m")
        records = []
        result = await h.client.chat(request(stream), on_attempt=records.append)
        assert result.text == expected_text("m", MESSAGES)
        assert [(r.status, r.error_type) for r in records] == \
            [("failed", "EmptyAnswer"), ("ok", None)]
        assert records[0].tokens_reported  # a 2xx's tokens are billed, as reported
        h.server.set_default(NOT_ANSWERS[model])
        with pytest.raises(EmptyAnswer) as caught:
            await h.client.chat(request(stream))
        error = caught.value
        assert str(error).startswith("fake/m: empty answer: the provider sent ")
        assert ("only whitespace" in str(error)) == (model == "spaces")
        assert len(error.attempts) == 2 and error.gave_up == "gave up after 2 attempts"
        assert error.kind == "EmptyAnswer" and error.retryable
    run(test, max_retries=1)


@pytest.mark.parametrize("stream", [True, False])
def test_an_empty_answer_that_ran_out_of_max_tokens_is_not_retried(stream):
    """Nothing but max_tokens spent (a reasoning model's thinking): the same request runs
    out the same way, so it goes to the fallback at once."""
    async def test(h: Harness):
        h.server.set_default(Behavior(text="", finish_reason="length"))
        with pytest.raises(EmptyAnswer) as caught:
            await h.client.chat(request(stream))
        error = caught.value
        assert "empty answer: max_tokens 64 ran out before any text" in str(error)
        assert not error.retryable and len(error.attempts) == 1
        assert len(h.server.requests) == 1
    run(test, max_retries=3)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("model", FILTERED)
def test_a_filtered_answer_is_named_and_not_retried(stream, model):
    async def test(h: Harness):
        h.server.set_default(NOT_ANSWERS[model])
        deltas: list[str] = []
        with pytest.raises(ContentFiltered) as caught:
            await h.client.chat(request(stream), on_delta=deltas.append)
        assert "content filter" in str(caught.value)
        assert len(caught.value.attempts) == 1 and len(h.server.requests) == 1
        if model == "filtered" and stream:
            assert deltas  # the text before the filter streamed, and is void
    run(test, max_retries=3)


@pytest.mark.parametrize("stream", [True, False])
def test_a_cut_answer_is_a_success_flagged_length(stream):
    async def test(h: Harness):
        h.server.set_default(NOT_ANSWERS["cut"])
        result = await h.client.chat(request(stream))
        assert result.truncated and result.text == expected_text("m", MESSAGES, tokens=3)
    run(test)


def test_the_policy_retries_empty_answers_but_not_one_that_ran_out():
    policy = RetryPolicy(max_retries=2)
    empty = EmptyAnswer("empty answer: no text", finish_reason="stop")
    spent = EmptyAnswer("empty answer: max_tokens ran out", finish_reason="length")
    assert decide(policy, 1, empty, now=0.0, deadline=None, random=lambda: 0.0).retry
    assert not decide(policy, 3, empty, now=0.0, deadline=None, random=lambda: 0.0).retry
    assert not decide(policy, 1, spent, now=0.0, deadline=None, random=lambda: 0.0).retry
    copy = pickle.loads(pickle.dumps(spent))
    assert copy.finish_reason == "length" and not copy.retryable and str(copy) == str(spent)


# --- the issue's pipeline -------------------------------------------------------------------

@pytest.mark.parametrize("streamed", [True, False])
def test_empty_proposals_never_meet_a_quorum(tmp_path, streamed):
    """The issue: [blank, blank, good] (min_ok = 2) and `aggregate blank fallback good`
    reported ok with an empty answer. Two empty proposals are two failures: the quorum
    fails, naming them, and no aggregator is asked."""
    ran = run_pipeline("  layer propose = [blank, blank, good] (min_ok = 2)\n"
                       "  aggregate blank fallback good", tmp_path, streamed=streamed)
    result = ran.result
    assert result.status == "failed" and result.answer is None
    assert re.fullmatch(r"layer propose: [01] of 3 agents answered \(2 failed(, 1 cancelled)?\), "
                        r"below its quorum of 2", result.errors[0]), result.errors
    for node in ("propose.0.blank", "propose.1.blank"):
        assert any(e.startswith(f"{node}: p/blank: empty answer: the provider sent no text")
                   for e in result.errors), result.errors
        assert [(c["status"], c["error_type"]) for c in ran.calls(node)] == \
            [("failed", "EmptyAnswer")]
    assert len(ran.asked("blank")) == 2  # the proposers: no aggregator was asked
    assert [c["status"] for c in ran.calls("aggregate.blank")] == ["skipped"]
    assert ran.calls("fallback.good") == []
    assert ran.query["status"] == "failed" and ran.query["answer"] is None
    assert not [e for e in ran.events if e[0] == "delta"]


@pytest.mark.parametrize("streamed", [True, False])
@pytest.mark.parametrize("bad", BAD)
def test_a_proposer_without_an_answer_is_not_read(tmp_path, streamed, bad):
    ran = run_pipeline(f"  layer propose = [good, {bad}, good2] (min_ok = 2)\n"
                       "  aggregate fb", tmp_path, streamed=streamed)
    result = ran.result
    answers = [expected_text(m, user()) for m in ("good", "good2")]
    assert result.status == "ok" and result.answered_by == "aggregate.fb"
    assert ran.asked("fb")[0].body["messages"] == reading(answers)
    assert result.answer == expected_text("fb", reading(answers))
    assert [c["error_type"] for c in ran.calls(f"propose.1.{bad}")] == [ERROR_OF[bad].__name__]
    assert result.failures == 1


@pytest.mark.parametrize("bad", BAD)
def test_a_refine_layer_reads_only_answers_and_passes_on_only_answers(tmp_path, bad):
    ran = run_pipeline(f"  layer propose = [good, {bad}, good2]\n"
                       f"  layer refine = [{bad}, good, good2] (min_ok = 2)\n"
                       "  aggregate fb", tmp_path)
    result = ran.result
    proposals = [expected_text(m, user()) for m in ("good", "good2")]
    refined = [expected_text(m, reading(proposals)) for m in ("good", "good2")]
    assert result.status == "ok", result.errors
    for model in ("good", "good2"):  # its refine call read the two proposals only
        assert ran.asked(model)[1].body["messages"] == reading(proposals)
    assert ran.asked(bad)[1].body["messages"] == reading(proposals)
    assert ran.asked("fb")[0].body["messages"] == reading(refined)
    assert result.answer == expected_text("fb", reading(refined))


def test_a_refine_layer_of_empty_answers_fails_its_quorum(tmp_path):
    ran = run_pipeline("  layer propose = [good, good2]\n"
                       "  layer refine = [blank, spaces, good] (min_ok = 2)\n"
                       "  aggregate fb", tmp_path)
    assert ran.result.status == "failed"
    # (the good one is cancelled when both empty answers come first: no quorum either way)
    assert re.fullmatch(r"layer refine: [01] of 3 agents answered \(2 failed(, 1 cancelled)?\), "
                        r"below its quorum of 2", ran.result.errors[0]), ran.result.errors
    assert not ran.asked("fb")


# --- the aggregator and its fallback -------------------------------------------------------

@pytest.mark.parametrize("streamed", [True, False])
@pytest.mark.parametrize("bad", BAD)
def test_an_aggregator_without_an_answer_hands_over_to_the_fallback(tmp_path, streamed, bad):
    ran = run_pipeline(f"  layer propose = [good, good2]\n  aggregate {bad} fallback fb",
                       tmp_path, streamed=streamed)
    result = ran.result
    answers = [expected_text(m, user()) for m in ("good", "good2")]
    assert result.status == "ok" and result.answered_by == "fallback.fb"
    assert result.answer == expected_text("fb", reading(answers)) == streamed_text(ran.events)
    assert ran.asked("fb")[0].body["messages"] == reading(answers)
    assert [(c["status"], c["error_type"]) for c in ran.calls(f"aggregate.{bad}")] == \
        [("failed", ERROR_OF[bad].__name__)]
    # an empty answer streams nothing, so nothing had to be taken back; a filter that cut
    # an answer short did stream some, and says the answer starts over
    restarts = [e for e in ran.events if e[0] == "restart"]
    assert len(restarts) == (1 if bad == "filtered" and streamed else 0)
    assert ran.query["answered_by"] == "fallback.fb" and ran.query["finish_reason"] == "stop"


@pytest.mark.parametrize("bad", EMPTY)
def test_an_empty_aggregator_is_retried_then_the_fallback_answers(tmp_path, bad):
    """max_retries = 1: the empty answer is asked again (once), then the fallback runs."""
    ran = run_pipeline(f"  layer propose = [good]\n  aggregate {bad} fallback fb",
                       tmp_path, retries=1)
    assert ran.result.answered_by == "fallback.fb"
    assert len(ran.asked(bad)) == 2
    calls = ran.calls(f"aggregate.{bad}")
    assert [(c["attempt"], c["status"], c["error_type"]) for c in calls] == \
        [(1, "failed", "EmptyAnswer"), (2, "failed", "EmptyAnswer")]
    assert "empty answer" in calls[-1]["error"]


def test_an_empty_aggregator_that_answers_on_its_retry_answers(tmp_path):
    ran = run_pipeline("  layer propose = [good]\n  aggregate good2 fallback fb", tmp_path,
                       retries=1, script={"good2": [Behavior.whitespace()]})
    assert ran.result.status == "ok" and ran.result.answered_by == "aggregate.good2"
    assert len(ran.asked("good2")) == 2
    answer = expected_text("good2", reading([expected_text("good", user())]))
    assert ran.result.answer == answer == streamed_text(ran.events)
    assert not [e for e in ran.events if e[0] == "restart"]  # the whitespace never streamed
    assert not ran.asked("fb")


def test_a_filtered_aggregator_is_not_retried(tmp_path):
    ran = run_pipeline("  layer propose = [good]\n  aggregate filtered fallback fb",
                       tmp_path, retries=2)
    assert ran.result.answered_by == "fallback.fb" and len(ran.asked("filtered")) == 1


@pytest.mark.parametrize("bad", BAD)
def test_a_fallback_without_an_answer_fails_the_query(tmp_path, bad):
    ran = run_pipeline(f"  layer propose = [good]\n  aggregate blank fallback {bad}", tmp_path)
    result = ran.result
    assert result.status == "failed" and result.answer is None
    assert result.errors[0] == "the aggregator failed and so did its fallback"
    assert any(e.startswith("aggregate.blank: p/blank: empty answer") for e in result.errors)
    assert any(e.startswith(f"fallback.{bad}: p/{bad}: ") for e in result.errors)
    assert ran.query["status"] == "failed" and ran.query["answer"] is None


def test_an_aggregator_alone_never_returns_an_empty_answer(tmp_path):
    ran = run_pipeline("  aggregate spaces", tmp_path)
    assert ran.result.status == "failed" and ran.result.answer is None
    assert ran.result.errors[0] == "the aggregator failed"


# --- cut by max_tokens -----------------------------------------------------------------------

@pytest.mark.parametrize("streamed", [True, False])
def test_a_cut_proposal_counts_and_is_marked_as_cut(tmp_path, streamed):
    ran = run_pipeline("  layer propose = [cut, good] (min_ok = 2)\n"
                       "  layer refine = [good, good2]\n  aggregate fb", tmp_path,
                       streamed=streamed)
    result = ran.result
    proposals = [expected_text("cut", user(), tokens=3), expected_text("good", user())]
    marked = reading(proposals, [CUT_BY_LENGTH, None])
    assert result.status == "ok", result.errors
    assert ran.asked("good")[1].body["messages"] == marked
    system = marked[0]["content"]
    assert f"1. {proposals[0]} {CUT_BY_LENGTH}\n\n2. {proposals[1]}" in system
    refined = [expected_text(m, marked) for m in ("good", "good2")]
    assert ran.asked("fb")[0].body["messages"] == reading(refined)  # nothing cut: no mark
    assert [c["finish_reason"] for c in ran.calls("propose.0.cut")] == ["length"]
    assert not result.truncated and result.finish_reason == "stop"


def test_a_cut_final_answer_is_flagged_everywhere(tmp_path):
    ran = run_pipeline("  layer propose = [good]\n  aggregate good2 (max_tokens = 3)",
                       tmp_path)
    result = ran.result
    assert result.status == "ok" and result.truncated and result.finish_reason == "length"
    assert result.answer == expected_text("good2", reading([expected_text("good", user())]),
                                          max_tokens=3)
    assert ran.query["finish_reason"] == "length"
    assert [c["finish_reason"] for c in ran.calls("aggregate.good2")] == ["length"]
    assert summary_line(result).startswith(
        "moac: ok · answer cut at max_tokens (finish_reason length) · $")
    (tmp_path / "whole").mkdir()
    whole = run_pipeline("  layer propose = [good]\n  aggregate good2", tmp_path / "whole")
    assert not whole.result.truncated and "cut" not in summary_line(whole.result)


def test_the_bound_on_what_a_layer_reads_counts_the_cut_marks():
    """The worst case a run admits a query on: answers at their most bytes, each cut (so
    each marked). The rendered request never exceeds the bound."""
    answers = ["é" * 50, "x" * 7, "日本" * 20]
    for note in (CUT_BY_LENGTH, SHORTENED):
        messages = [{"role": "system", "content": render_template(
            DEFAULT_AGGREGATE_PROMPT, answers, [note] * len(answers))}] + user()
        bound = input_max_tokens(messages_max_tokens(user()), template=DEFAULT_AGGREGATE_PROMPT,
                                 answers=[text_max_tokens(a) for a in answers])
        assert messages_max_tokens(messages) <= bound


def test_a_note_follows_the_answer_on_its_line():
    text = render_template("{responses}", ["one\n\n", "two"], [CUT_BY_LENGTH, None])
    assert text == f"1. one {CUT_BY_LENGTH}\n\n2. two"


# --- a route --------------------------------------------------------------------------------

def test_empty_proposals_do_not_agree_with_each_other_in_a_route(tmp_path):
    """Two empty proposals are identical: read as answers they would agree perfectly and
    exit early. They are failures, so one answer is left, nothing to compare, and the
    target (with its refine layer) answers."""
    from test_route import AGREEMENT_ROUTE, route_plan, run_route
    ran = run_route(lambda url: route_plan(url, AGREEMENT_ROUTE), ["Name three uses of copper."],
                    tmp_path, behaviors={"m-a1": Behavior(text="wires"),
                                         "m-a2": Behavior.empty(), "m-a3": Behavior.whitespace()})
    result = ran.results[0]
    assert result.status == "ok", result.errors
    decision = result.decisions[-1]
    assert decision["chosen"] == "full" and "fewer than two answers" in decision["reason"]
    aggregate = next(r for r in ran.requests if r.body["model"] == "m-agg")
    system = aggregate.body["messages"][0]["content"]
    assert "1. " in system and "2. " not in system  # the one refined answer, alone
    assert result.answer and result.answered_by.startswith("aggregate")


def test_a_route_compares_only_the_answers(tmp_path):
    from test_route import AGREE, AGREEMENT_ROUTE, route_plan, run_route
    behaviors = dict(AGREE, **{"m-a3": Behavior.filtered()})
    ran = run_route(lambda url: route_plan(url, AGREEMENT_ROUTE), ["Name three uses of copper."],
                    tmp_path, behaviors=behaviors)
    result = ran.results[0]
    assert result.status == "ok" and result.pipeline == "lite"
    assert result.decisions[-1]["numbers"]["answers"] == 2


# --- the CLI and the answers file ---------------------------------------------------------

def write_moa(tmp_path, url: str, body: str):
    path = tmp_path / "p.moa"
    path.write_text(source(url, body))
    return str(path)


def cli_run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_cli_never_prints_an_empty_answer_as_a_success(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_OPENAI_KEY", KEY)
    with serve_in_thread(api_key=KEY) as server:
        serve(server, True)
        issue = write_moa(tmp_path, server.url, "  layer propose = [blank, blank, good] "
                                                "(min_ok = 2)\n  aggregate blank fallback good")
        code, out, err = cli_run(capsys, "run", issue, "--prompt", PROMPT)
        assert code == 1 and out == ""
        assert "empty answer" in err and "below its quorum of 2" in err
        assert err.rstrip().splitlines()[-1].startswith("moac: failed · $")

        rescued = write_moa(tmp_path, server.url, "  layer propose = [blank, good, good2] "
                                                  "(min_ok = 2)\n  aggregate spaces fallback fb")
        code, out, err = cli_run(capsys, "run", rescued, "--prompt", PROMPT)
        answers = [expected_text(m, user()) for m in ("good", "good2")]
        assert code == 0 and out == expected_text("fb", reading(answers)) + "\n"
        assert "starts over" not in err  # the whitespace never reached stdout
        assert "answered by fallback.fb" in err.splitlines()[-1]


def test_the_cli_says_when_the_answer_was_cut(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_OPENAI_KEY", KEY)
    with serve_in_thread(api_key=KEY) as server:
        moa = write_moa(tmp_path, server.url, "  aggregate good (max_tokens = 3)")
        code, out, err = cli_run(capsys, "run", moa, "--prompt", PROMPT)
        assert code == 0 and out == expected_text("good", user(), max_tokens=3) + "\n"
        assert re.fullmatch(r"moac: ok · answer cut at max_tokens \(finish_reason length\) · "
                            r"\$\d\.\d{4} · .* · 1 call · 0 failed\n", err), err
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text('{"instruction": "one"}\n{"instruction": "two"}\n')
        out_file = tmp_path / "answers.jsonl"
        code, out, err = cli_run(capsys, "run", moa, "--prompts", str(prompts),
                                 "--out", str(out_file))
        assert code == 0 and "moac: 2 answered (2 cut at max_tokens), 0 failed" in err
        rows = [json.loads(line) for line in out_file.read_text().splitlines()]
        assert [r["finish_reason"] for r in rows] == ["length", "length"]


# --- the response cache --------------------------------------------------------------------

def test_an_empty_answer_in_a_cache_is_a_miss_and_is_replaced(tmp_path):
    """An older moac may have stored an empty answer: it is never answered, and the next
    complete answer takes its place."""
    path = tmp_path / "cache.sqlite"
    key = request_key(request(True))
    answer = CallResult("forty-two", "stop", Usage(10, 2, True))
    with ResponseCache(path) as cache:
        with pytest.raises(ValueError, match="with text"):
            cache.put(key, "m", CallResult("  \n", "stop", Usage(10, 2, True)))
        cache.put(key, "m", answer)
    with sqlite3.connect(path) as db:  # as an older moac wrote it
        db.execute("UPDATE responses SET text = ' ' WHERE key = ?", (key,))
    with ResponseCache(path) as cache:
        assert cache.get(key) is None and cache.stats.misses == 1
        assert cache.put(key, "m", answer)
        assert cache.get(key).text == "forty-two" and len(cache) == 1


def test_whitespace_before_the_text_streams_with_it(tmp_path):
    """Held back only while it might be an empty answer: the answer streams whole."""
    ran = run_pipeline("  aggregate good", tmp_path,
                       script={"good": [Behavior(text=" \n  hi there")]})
    assert ran.result.answer == " \n  hi there" == streamed_text(ran.events)
    assert ran.events[0] == ("delta", " \n  hi")
