"""Predicted quality of a plan: its AlpacaEval 2.0 length-controlled win rate, in points.

A quality model is anything with ``predict(plan) -> float`` (:class:`QualityModel`); the
planner takes one as a parameter, so a later calibration from measured quality replaces
:class:`MoaQualityModel` without touching the search.

The default model, in words: every answer has a quality in win-rate points. A first-layer
agent's answer is as good as its model alone (its *prior*, the model's ``quality``). An agent
that reads a set S of answers writes an answer pulled from its own prior towards what the set
makes possible, its *potential* E(S):

    E(S)     = C + kappa * mean quality of S
                 + G_s * [|S| >= 2]                       (a second answer to compare)
                 + G_d * (1 - rho ** (distinct(S) - 1))    (distinct models, saturating)
    answer   = alpha * prior + (1 - alpha) * E(S)
    plan     = the final aggregator's answer; an aggregator alone is its prior.

``distinct(S)`` counts distinct ``model_id`` values: six samples of one model are one model,
so copies earn the sampling gain but not the diversity gain. Diminishing returns in the number
of proposers come from both gains saturating (and from the mean, which weak proposers lower);
diminishing returns in layers from each layer passing on only ``(1 - alpha) * kappa`` of its
input's quality. Coefficients (planner.constants): alpha 0.34, kappa 0.18, C 44.0, G_s 10.2,
G_d 15.0, rho 0.80, fitted minimax to the published points (Wang et al. 2024, MoA paper)::

    pipeline (aggregator qwen110 unless said)    published  predicted
    1 layer, 1 proposer (qwen110)                   47.8       49.2
    1 layer, 2 / 3 / 6 samples of qwen110        54.5 / 56.1 / 56.7   55.9 / 55.9 / 55.9
    1 layer, first 2 / 3 / 6 of the six models   58.8 / 58.0 / 61.3   57.5 / 59.5 / 61.8
    MoA-Lite (6 proposers, qwen72 aggregating)      59.3       59.3
    MoA (6 proposers, 6 refiners)                   65.1       64.4

A model that declares no ``quality`` has no prior: a prediction resting on it (a kept agent
or the aggregator; a fallback only once it aggregates) is *unknown*, and every report says
so instead of printing a number (:meth:`MoaQualityModel.known`, :func:`unknown_models`). The
search still has to rank sub-plans to prune one to a budget, so it puts
:data:`~planner.constants.UNKNOWN_QUALITY` in the missing prior's place: a low value, so that
the planner prefers what it knows; what it chooses that way is reported as "quality unknown",
never with the assumed number. Quality dominance is never claimed for an unknown quality.

Caveat: every fitted point has priors between 25 and 51; far outside that range (a 5-point
model aggregating itself, say) the model is an extrapolation and over-predicts. Self-MoA (one
strong model sampled six times beating a mixture) is not reproduced: the MoA paper's own
ablation, which this model fits, finds the opposite for its models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

import numpy as np

from moac.ir.spec import ModelSpec

from planner import constants as k

if TYPE_CHECKING:
    from moac.ir import Plan


class QualityModel(Protocol):
    """``predict`` is required. A model may also define ``unknown_models(plan)``, the models
    whose quality its prediction for ``plan`` assumes (:func:`unknown_models`): with any,
    that prediction is reported as unknown."""

    def predict(self, plan: "Plan") -> float:
        """Predicted AlpacaEval 2.0 LC win rate of ``plan`` (0..100)."""
        ...


def unknown_models(model: "QualityModel", plan: "Plan") -> list[str]:
    """The models whose quality ``model``'s prediction for ``plan`` assumes (empty: the
    prediction rests on declared figures only). A model without ``unknown_models`` is taken
    at its word."""
    ask = getattr(model, "unknown_models", None)
    return list(ask(plan)) if callable(ask) else []


def predicted_or_none(model: "QualityModel", plan: "Plan") -> float | None:
    """``model``'s prediction for ``plan``, or None when it is unknown (it would rest on a
    model that declares no quality)."""
    return None if unknown_models(model, plan) else float(model.predict(plan))


# A planner block's settings -> MoaQualityModel's fields.
_FIELDS = {"quality_base": "base", "quality_prior_weight": "alpha",
           "quality_mean_weight": "kappa", "quality_sampling_gain": "sampling_gain",
           "quality_diversity_gain": "diversity_gain",
           "quality_diversity_decay": "diversity_decay"}


@dataclass(frozen=True)
class MoaQualityModel:
    """The model above. The exact search relies on its shape (``potential`` affine and
    increasing in the mean, ``write`` affine and increasing in the potential); new
    coefficients are fine, a new shape needs the search's bound revisited."""

    alpha: float = k.QUALITY_PRIOR_WEIGHT
    kappa: float = k.QUALITY_MEAN_WEIGHT
    base: float = k.QUALITY_BASE
    sampling_gain: float = k.QUALITY_SAMPLING_GAIN
    diversity_gain: float = k.QUALITY_DIVERSITY_GAIN
    diversity_decay: float = k.QUALITY_DIVERSITY_DECAY
    unknown: float = k.UNKNOWN_QUALITY

    @classmethod
    def of(cls, plan: "Plan") -> "MoaQualityModel":
        """The model with the coefficients ``plan`` carries (a ``planner`` block's, as
        ``moac calibrate`` writes them), the fitted defaults for the rest."""
        return cls(**{_FIELDS[key]: value for key, value in plan.quality.items()
                      if key in _FIELDS})

    def prior(self, model: ModelSpec) -> float:
        """A model's quality alone; :data:`UNKNOWN_QUALITY` where the file declares none."""
        return self.unknown if model.quality is None else float(model.quality)

    def gains(self, answers, distinct):
        """Sampling and diversity gains for ``answers`` answers from ``distinct`` models
        (numbers or numpy arrays)."""
        answers = np.asarray(answers)
        distinct = np.maximum(np.asarray(distinct), 1)
        return (self.sampling_gain * (answers >= 2)
                + self.diversity_gain * (1.0 - self.diversity_decay ** (distinct - 1)))

    def potential(self, mean, answers, distinct):
        """E(S) from the mean quality of the answers, their number and distinct models."""
        return self.base + self.kappa * np.asarray(mean) + self.gains(answers, distinct)

    def write(self, prior, potential):
        """Quality of the answer an agent of ``prior`` writes from answers of ``potential``."""
        return self.alpha * np.asarray(prior) + (1.0 - self.alpha) * np.asarray(potential)

    def layer_potential(self, priors: Sequence[float], model_ids: Sequence[str],
                        previous: float | None) -> float:
        """E of one layer's answers; ``previous`` is the potential it read (None: first)."""
        answers = [p if previous is None else float(self.write(p, previous)) for p in priors]
        return float(self.potential(sum(answers) / len(answers), len(answers),
                                    len(set(model_ids))))

    def predict(self, plan: "Plan") -> float:
        previous = None
        for layer in plan.layers[:-1]:
            calls = [plan.call(n) for n in layer.nodes]
            if not calls:
                continue
            models = [plan.models[c.model] for c in calls]
            previous = self.layer_potential([self.prior(m) for m in models],
                                            [m.model_id for m in models], previous)
        final = next(plan.call(n) for n in plan.layers[-1].nodes
                     if plan.call(n).role == "aggregate")
        prior = self.prior(plan.models[final.model])
        return prior if previous is None else float(self.write(prior, previous))

    def unknown_models(self, plan: "Plan") -> list[str]:
        """The models :meth:`predict` reads a prior of (every agent before the final stage,
        and the aggregator; not a fallback that never aggregates) that declare no quality:
        for them it assumes :attr:`unknown`, so with any the prediction is unknown."""
        names = {plan.call(n).model for layer in plan.layers[:-1] for n in layer.nodes}
        names |= {plan.call(n).model for n in plan.layers[-1].nodes
                  if plan.call(n).role == "aggregate"}
        return sorted(name for name in names if plan.models[name].quality is None)

    def known(self, plan: "Plan") -> bool:
        """Whether :meth:`predict` rests on declared qualities only."""
        return not self.unknown_models(plan)
