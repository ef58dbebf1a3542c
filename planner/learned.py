"""The learned route policy: from judged traces, when does the larger pipeline win?

``moac fit-router`` reads quality traces (``moac eval`` lines of ``type: quality``) in which
two pipelines, a larger and a smaller, were judged on the same queries, and fits a logistic
regression (numpy, Newton's method, L2 penalty on all but the bias) of

    y = 1 when the larger pipeline's judged result beats the smaller's on the query, else 0

(ties are 0: the smaller pipeline was enough) on the pre-route policy's query features
(:data:`planner.features.FEATURE_NAMES`, carried by each quality line). A route with
``policy = [learned]`` then sends a query to the larger pipeline when the predicted
probability reaches the router's threshold (0.5).

The fit reports its k-fold held-out accuracy (against always predicting the majority class)
and, on the held-out queries, what each policy would have cost and scored with the judged
answers in hand: always-larger, always-smaller, the pre-route policy at the same share of
queries sent to the larger pipeline, the learned router, and the oracle (each query's better
answer, the cheaper on a tie).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from planner.constants import ROUTER_FOLDS, ROUTER_RIDGE
from planner.features import FEATURE_NAMES, query_features

from planner.router_file import FORMAT, RouterFileError, check_router_data, read_router_file

__all__ = ["FORMAT", "LearnedRouter", "NothingParsed", "RouterFileError", "fit_router",
           "load_router"]

# What each protocol's judge must write (moac.evaluation.verdicts.EXPECTED says the same;
# the planner does not import the evaluation).
_EXPECTED = {"pairwise": "[[A]]/[[B]]/[[C]]", "single": "a rating [[1]]..[[10]]"}


class NothingParsed(ValueError):
    """The traces hold verdicts on the two pipelines, but no query has a parsed one for both
    because the judge's could not be parsed: judging again with it would change little."""


@dataclass(frozen=True)
class LearnedRouter:
    larger: str
    smaller: str
    coefficients: tuple[float, ...]
    threshold: float = 0.5
    trained_on: int = 0
    held_out_accuracy: float | None = None
    feature_names: tuple[str, ...] = FEATURE_NAMES

    def probability(self, text: str) -> float:
        """P(the larger pipeline wins on ``text``)."""
        return _sigmoid(float(query_features(text).vector() @ np.asarray(self.coefficients)))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(format=FORMAT, version=1, coefficients=list(self.coefficients),
                    feature_names=list(self.feature_names))
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "router") -> "LearnedRouter":
        check_router_data(data, where)
        if tuple(data.get("feature_names", ())) != FEATURE_NAMES:
            raise RouterFileError(f"{where} was fitted on other features than this moac's "
                                  f"({', '.join(FEATURE_NAMES)}): fit it again")
        try:
            return cls(larger=str(data["larger"]), smaller=str(data["smaller"]),
                       coefficients=tuple(float(c) for c in data["coefficients"]),
                       threshold=float(data.get("threshold", 0.5)),
                       trained_on=int(data.get("trained_on", 0)),
                       held_out_accuracy=data.get("held_out_accuracy"))
        except (KeyError, TypeError, ValueError) as error:
            raise RouterFileError(f"{where} is malformed: {error}") from None


def load_router(path: str) -> LearnedRouter:
    return LearnedRouter.from_dict(read_router_file(path), path)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def logistic_fit(x: np.ndarray, y: np.ndarray, ridge: float = ROUTER_RIDGE,
                 steps: int = 50) -> np.ndarray:
    """Coefficients maximising the Bernoulli log-likelihood minus ``ridge/2 |b[1:]|²``
    (the first column is the bias, unpenalised), by Newton's method."""
    beta = np.zeros(x.shape[1])
    penalty = ridge * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    for _ in range(steps):
        p = _sigmoid(x @ beta)
        gradient = x.T @ (y - p) - penalty @ beta
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty + 1e-9 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, gradient)
        beta += step
        if np.max(np.abs(step)) < 1e-10:
            break
    return beta


@dataclass
class Example:
    """One query judged for both pipelines."""
    query: str
    features: np.ndarray
    larger: float      # the larger pipeline's judged result (preference 0..1, or score)
    smaller: float
    larger_usd: float
    smaller_usd: float

    @property
    def label(self) -> int:
        return int(self.larger > self.smaller)


def examples_from_records(records: Iterable[dict], larger: str, smaller: str,
                          judge: str | None = None) -> list[Example]:
    """Queries (and turns) with a parsed verdict for both pipelines and their features.
    Verdicts are only compared within one judge (with its protocol) and one prompt set;
    when the records hold several judges, ``judge`` must name one (ValueError otherwise).
    When there are verdicts on the two pipelines but none was parsed, :class:`NothingParsed`
    says how many and what the judge failed to write."""
    found: dict[tuple, dict[str, dict]] = {}
    judges: set[str] = set()
    unparsed: dict[str, list[dict]] = {}  # judge -> its unparsed verdicts (not failed calls)
    for r in records:
        if r.get("type") != "quality" or r.get("pipeline") not in (larger, smaller) or \
                not isinstance(r.get("features"), list):
            continue
        if not r.get("parsed"):
            if r.get("error") is None:
                unparsed.setdefault(str(r.get("judge")), []).append(r)
            continue
        judges.add(str(r.get("judge")))
        if judge is not None and r.get("judge") != judge:
            continue
        key = (r.get("judge"), r.get("protocol"), r.get("prompts"), r.get("query_id"),
               r.get("turn", 1))
        found.setdefault(key, {})[r["pipeline"]] = r
    if judge is None and len(judges) > 1:
        raise ValueError(f"the traces hold verdicts of several judges ({', '.join(sorted(judges))}"
                         "): choose one")
    out = []
    for key, pair in sorted(found.items(), key=lambda item: str(item[0])):
        if larger in pair and smaller in pair:
            big, small = pair[larger], pair[smaller]
            out.append(Example(
                f"{key[2]}:{key[3]}#{key[4]}", np.asarray(big["features"], dtype=float),
                _value(big), _value(small), float(big.get("answer_cost_usd") or 0.0),
                float(small.get("answer_cost_usd") or 0.0)))
    if not out:
        parsed = sum(len(pair) for pair in found.values())
        _nothing_parsed(unparsed, judge or next(iter(judges), None), parsed, larger, smaller)
    return out


def _nothing_parsed(unparsed: dict[str, list[dict]], judge: str | None, parsed: int,
                    larger: str, smaller: str) -> None:
    """Raise :class:`NothingParsed` when no query has a parsed verdict for both pipelines
    because the judge's verdicts were unparsed (``parsed``: how many verdicts were parsed)."""
    if judge is not None:
        unparsed = {judge: unparsed.get(judge, [])}
    unparsed = {name: rows for name, rows in unparsed.items() if rows}
    if not unparsed:
        return
    count = sum(len(rows) for rows in unparsed.values())
    who = "; ".join(f"judge {name} did not write "
                    f"{_EXPECTED.get(str(rows[0].get('protocol')), 'a verdict')}"
                    for name, rows in sorted(unparsed.items()))
    what = (f"{count} answer{'s' * (count != 1)} of {larger} and {smaller} "
            f"{'were' if count != 1 else 'was'} judged but every verdict was unparsed ({who})"
            if not parsed else
            f"{count} of {count + parsed} verdicts on {larger} and {smaller} were unparsed "
            f"({who}), and no query has a parsed verdict for both")
    raise NothingParsed(
        f"{what}; judging again with the same judge would change little: a stronger judge "
        "model is needed (declare one in a `judge` block, run `moac eval --judge NAME` with "
        "it, then fit on its traces)")


def _value(record: dict) -> float:
    return float(record["preference"] if record.get("protocol") == "pairwise"
                 else record["score"])


@dataclass
class FitReport:
    examples: int
    larger_wins: int
    held_out_accuracy: float
    majority_accuracy: float
    policies: dict[str, dict[str, float]] = field(default_factory=dict)

    def render(self, larger: str, smaller: str) -> str:
        lines = [f"{self.examples} queries judged for both {larger} and {smaller}; "
                 f"{larger} better on {self.larger_wins}",
                 f"held-out accuracy ({ROUTER_FOLDS}-fold) {self.held_out_accuracy:.1%} "
                 f"(always the majority class: {self.majority_accuracy:.1%})",
                 "", f"{'policy (held-out queries)':<28}{'to ' + larger:>12}{'quality':>10}"
                 f"{'$/query':>12}"]
        for name, row in self.policies.items():
            lines.append(f"{name:<28}{row['share']:>12.1%}{row['quality']:>10.3f}"
                         f"{'$' + format(row['usd'], '.5f'):>12}")
        lines.append("quality: mean judged result of the answers the policy would have "
                     "served (preference 0-1 or score)")
        return "\n".join(lines) + "\n"


def fit_router(examples: Sequence[Example], larger: str, smaller: str, *,
               folds: int = ROUTER_FOLDS, seed: int = 0) -> tuple[LearnedRouter, FitReport]:
    """The router fitted on every example, and the held-out report (module docstring)."""
    if len(examples) < 2 * folds:
        raise ValueError(f"{len(examples)} queries judged for both {larger} and {smaller}; "
                         f"fitting needs at least {2 * folds}")
    x = np.stack([e.features for e in examples])
    y = np.array([e.label for e in examples], dtype=float)
    order = np.random.default_rng(seed).permutation(len(examples))
    predicted = np.zeros(len(examples))
    for fold in range(folds):
        test = order[fold::folds]
        train = np.setdiff1d(order, test)
        predicted[test] = _sigmoid(x[test] @ logistic_fit(x[train], y[train]))
    take_larger = predicted >= 0.5
    accuracy = float(np.mean(take_larger == (y == 1)))
    share = float(take_larger.mean())
    report = FitReport(len(examples), int(y.sum()), accuracy,
                       float(max(y.mean(), 1 - y.mean())))
    from planner.preroute import default_model
    gains = x @ np.asarray(default_model().coefficients)  # the pre-route policy's scores
    by_gain = np.zeros(len(examples), dtype=bool)
    if share > 0:
        by_gain[np.argsort(-gains, kind="stable")[:max(1, round(share * len(examples)))]] = True
    oracle = np.array([e.larger > e.smaller for e in examples])
    for name, choice in (("always " + larger, np.ones(len(examples), dtype=bool)),
                         ("always " + smaller, np.zeros(len(examples), dtype=bool)),
                         ("preroute, same share", by_gain), ("learned", take_larger),
                         ("oracle", oracle)):
        report.policies[name] = _outcome(examples, choice)
    router = LearnedRouter(larger, smaller, tuple(float(b) for b in logistic_fit(x, y)),
                           trained_on=len(examples), held_out_accuracy=accuracy)
    return router, report


def _outcome(examples: Sequence[Example], larger: np.ndarray) -> dict[str, float]:
    quality = [e.larger if big else e.smaller for e, big in zip(examples, larger)]
    usd = [e.larger_usd if big else e.smaller_usd for e, big in zip(examples, larger)]
    return {"share": float(np.mean(larger)), "quality": float(np.mean(quality)),
            "usd": float(np.mean(usd)) if usd else math.nan}
