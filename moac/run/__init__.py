"""The run stage: plans executed over HTTP, one query or a resumable batch at a time.

Takes a :class:`~moac.ir.Plan` (or route plan) and prompts; gives answers, per-query results
and trace lines. :mod:`.executor` runs one query's DAG under its deadline (:mod:`.agent_call`
one call, :mod:`.ledger` its budget, :mod:`.outcomes` its results), :mod:`.router` a route's
choice, :mod:`.runner` runs and batches (:mod:`.batch_files` their files), :mod:`.cache`
record and replay. May import the plan, the planner, the providers and the traces.
"""

from moac.run.runner import (
    AnswerStream, BatchProgress, Delta, MissingApiKey, PromptItem, ProviderError, Reasoning,
    Restart, RunError, Runner, answered, compact_answers, default_answers_path, load_prompts,
    read_answers, run_plan, stderr_progress, summary_line,
)

__all__ = ["AnswerStream", "BatchProgress", "Delta", "MissingApiKey", "PromptItem",
           "ProviderError", "Reasoning", "Restart", "RunError", "Runner", "answered",
           "compact_answers",
           "default_answers_path", "load_prompts", "read_answers", "run_plan",
           "stderr_progress", "summary_line"]
