"""dpo: learn from pairs of replies to the same prompt, one chosen and one rejected.

``pref_loss`` picks the objective (LLaMA-Factory's names and defaults):

- ``sigmoid`` (DPO): ``-log sigmoid(beta * margin)``, where the margin is how much more the policy
  raised the chosen reply's log-probability over the reference than the rejected one's;
  ``dpo_label_smoothing`` mixes in the loss of the flipped pair (conservative DPO, for noisy labels);
- ``hinge`` (SLiC): ``relu(1 - beta * margin)``;
- ``ipo``: ``(margin - 1 / (2 * beta))^2``, with per-token average log-probabilities (as
  LLaMA-Factory and TRL do), which keeps the target margin independent of reply length;
- ``orpo``: no reference; the chosen reply's per-token NLL plus ``beta`` x the odds-ratio loss;
- ``simpo``: no reference; ``-log sigmoid(beta * (avg logp chosen - avg logp rejected) - simpo_gamma)``.

``pref_ftx`` adds ``pref_ftx`` x the chosen reply's per-token NLL to any of them. The rows, the
reference model and the metric logging are shared with kto (see _preference.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge import ConfigKey, StageSpec, hookimpl

from ._preference import SHARED_KEYS, media_inputs, shared_problems, stage_settings

LOSSES = ("sigmoid", "hinge", "ipo", "orpo", "simpo")
#: Losses that compare the policy's scores with each other only, so no reference model is loaded.
REFERENCE_FREE = ("orpo", "simpo")
#: Losses that compare per-token average log-probabilities instead of sums.
LENGTH_NORMALISED = ("ipo", "orpo", "simpo")

KEYS = SHARED_KEYS + (
    ConfigKey("pref_loss", str, "sigmoid", "Preference loss: sigmoid (DPO), hinge, ipo, orpo or simpo.", choices=LOSSES),
    ConfigKey("dpo_label_smoothing", float, 0.0,
              "Probability that a pair's labels are flipped (conservative DPO, 0 to 0.5); sigmoid loss only."),
    ConfigKey("simpo_gamma", float, 0.5, "SimPO's target reward margin (pref_loss: simpo)."),
    ConfigKey("pref_bco_weight", float, 0.0, "Weight of LLaMA-Factory's BCO loss mixed into DPO.", effective=False),
)


def validate(config, plan) -> list[str]:
    values = stage_settings(config, KEYS)
    loss = values["pref_loss"]
    problems = shared_problems(config, plan, values, "dpo", needs_reference=loss not in REFERENCE_FREE,
                               reason_no_reference=f"pref_loss: {loss}")
    smoothing = values["dpo_label_smoothing"]
    if smoothing and loss != "sigmoid":
        problems.append(f"dpo_label_smoothing: {smoothing} applies only to pref_loss: sigmoid (the loss that models "
                        f"label noise), not {loss}; remove dpo_label_smoothing or set pref_loss: sigmoid")
    if not 0 <= smoothing <= 0.5:
        problems.append(f"dpo_label_smoothing must be between 0 and 0.5, got {smoothing}: it is the probability that "
                        "a pair's labels are flipped (above 0.5 the preferences would be learnt backwards)")
    return problems


@dataclass(frozen=True)
class DPOObjective:
    """The dpo loss of one batch of pairs (PairwiseCollator: the B chosen rows, then the B rejected rows)."""

    loss_type: str = "sigmoid"
    beta: float = 0.1
    ftx: float = 0.0
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5

    @classmethod
    def from_config(cls, config) -> "DPOObjective":
        values = stage_settings(config, KEYS)
        return cls(loss_type=values["pref_loss"], beta=float(values["pref_beta"]), ftx=float(values["pref_ftx"]),
                   label_smoothing=float(values["dpo_label_smoothing"]), simpo_gamma=float(values["simpo_gamma"]))

    @property
    def needs_reference(self) -> bool:
        return self.loss_type not in REFERENCE_FREE

    @property
    def metric_names(self) -> tuple[str, ...]:
        names = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                 "logps/chosen", "logps/rejected")
        if self.loss_type == "orpo":
            names += ("odds_ratio_loss", "log_odds_ratio")
        if self.loss_type == "orpo" or self.ftx > 0:
            names += ("sft_loss",)
        return names

    def derived_metrics(self, averages: dict) -> dict:
        return {}

    def __call__(self, trainer, model, inputs):
        """(loss, metrics): one policy forward over all 2B rows, one reference forward if needed."""
        import torch
        import torch.nn.functional as F

        rows = (inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        media = media_inputs(inputs)  # a multimodal batch: both sides see their prompt's images
        pairs = rows[0].shape[0] // 2
        policy = trainer.policy_logps(model, *rows, **media)
        scores = policy.mean if self.loss_type in LENGTH_NORMALISED else policy.total
        chosen, rejected = scores[:pairs], scores[pairs:]
        metrics = {}
        if self.needs_reference:
            reference = trainer.reference_logps(model, *rows, **media)
            ref_scores = reference.mean if self.loss_type in LENGTH_NORMALISED else reference.total
            chosen_ratio, rejected_ratio = chosen - ref_scores[:pairs], rejected - ref_scores[pairs:]
            margin = chosen_ratio - rejected_ratio
            if self.loss_type == "sigmoid":
                smoothing = self.label_smoothing
                losses = -(1 - smoothing) * F.logsigmoid(self.beta * margin) - smoothing * F.logsigmoid(-self.beta * margin)
            elif self.loss_type == "hinge":
                losses = torch.relu(1 - self.beta * margin)
            elif self.loss_type == "ipo":
                losses = (margin - 1 / (2 * self.beta)) ** 2
            else:
                raise ValueError(f"unknown pref_loss '{self.loss_type}'")
            chosen_rewards, rejected_rewards = self.beta * chosen_ratio, self.beta * rejected_ratio
        elif self.loss_type == "orpo":
            # log odds(y) = log p - log(1 - p), with p the per-token average probability of the reply
            log_odds = (chosen - rejected) - (_log1m_exp(chosen) - _log1m_exp(rejected))
            odds_ratio_loss = -F.logsigmoid(log_odds)
            losses = -chosen + self.beta * odds_ratio_loss
            metrics.update({"odds_ratio_loss": odds_ratio_loss, "log_odds_ratio": log_odds})
            chosen_rewards, rejected_rewards = self.beta * chosen, self.beta * rejected
        elif self.loss_type == "simpo":
            losses = -F.logsigmoid(self.beta * (chosen - rejected) - self.simpo_gamma)
            chosen_rewards, rejected_rewards = self.beta * chosen, self.beta * rejected
        else:
            raise ValueError(f"unknown pref_loss '{self.loss_type}'")
        if self.ftx > 0:
            losses = losses + self.ftx * -policy.mean[:pairs]
        if self.loss_type == "orpo" or self.ftx > 0:
            metrics["sft_loss"] = -policy.mean[:pairs]
        metrics.update({
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
            "logps/chosen": chosen,
            "logps/rejected": rejected,
        })
        return losses.mean(), metrics


def _log1m_exp(logp):
    """log(1 - exp(logp)) for logp < 0, accurate near 0 (a reply the model is almost sure of)."""
    import torch

    return torch.log(-torch.expm1(logp.clamp(max=-1e-6)))


def run(ctx):
    from ._preference import run_preference_stage

    return run_preference_stage(ctx, "pairwise", DPOObjective.from_config(ctx.config))


@hookimpl
def tuneforge_stages():
    return [StageSpec(
        name="dpo",
        description="Preference optimisation on chosen/rejected pairs: DPO, hinge, IPO, ORPO, SimPO (pref_loss).",
        keys=KEYS,
        run=run,
        validate=validate,
        data_kind="pairwise",
        takes_media=True,
        pairs_rows=True,
        needs_reference=lambda config: str(config.get("pref_loss") or "sigmoid") not in REFERENCE_FREE,
    )]
