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

``pref_ftx`` adds ``pref_ftx`` x the chosen reply's per-token NLL to any of them. Two LLaMA-Factory
extras:

- ``ld_alpha`` (LD-DPO, length desensitisation): in the policy's log-probability of each reply, the
  tokens past the length of the pair's shorter reply (the "verbose" tail of the longer one) count
  ``ld_alpha`` times (1 = plain DPO; LLaMA-Factory suggests 0 to 1). The reference's scores are not
  weighted.
- ``pref_bco_weight`` (losses with a reference: sigmoid, hinge, ipo): adds BCO's loss,
  ``-log sigmoid(beta * chosen_ratio - delta) - log sigmoid(-(beta * rejected_ratio - delta))`` with
  ``delta`` the running mean of the batches' rewards, and returns ``(loss + w * bco) / (1 + w)``.

The rows, the reference model and the metric logging are shared with kto (see _preference.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tuneforge import ConfigKey, StageSpec, hookimpl

from ._preference import SHARED_KEYS, SequenceLogps, media_inputs, shared_problems, stage_settings

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
    ConfigKey("pref_bco_weight", float, 0.0,
              "Weight w of BCO's loss mixed into the loss: (loss + w * bco) / (1 + w); losses with a reference."),
    ConfigKey("ld_alpha", float, None,
              "LD-DPO: weight of the policy's log-probabilities of the tokens of the longer reply past the shorter "
              "one's length (1 or unset: plain DPO)."),
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
    bco = values["pref_bco_weight"] or 0.0
    if bco < 0:
        problems.append(f"pref_bco_weight must be 0 or more, got {bco}: it is the weight of BCO's loss in the mix")
    elif bco > 0 and loss in REFERENCE_FREE:
        problems.append(f"pref_bco_weight: {bco} needs a reference model's scores, which pref_loss: {loss} does not "
                        "use; set pref_loss: sigmoid (or hinge, ipo) or remove pref_bco_weight")
    ld_alpha = values["ld_alpha"]
    if ld_alpha is not None and ld_alpha < 0:
        problems.append(f"ld_alpha must be 0 or more, got {ld_alpha}: it weights the verbose tail of the longer "
                        "reply (0 = ignore it, 1 = plain DPO)")
    return problems


@dataclass
class RunningMean:
    """BCO's baseline ``delta``: the running mean of the batches' average rewards (as TRL's RunningMoments)."""

    mean: float = 0.0
    count: int = 0

    def update(self, value: float) -> float:
        self.count += 1
        self.mean += (value - self.mean) / self.count
        return self.mean


def length_desensitised(policy, pairs: int, alpha: float):
    """LD-DPO: per-row log-probabilities whose tokens past the pair's shorter reply count ``alpha`` times.

    Row i and row i + pairs are one pair's chosen and rejected reply; the first ``min(len_chosen,
    len_rejected)`` labelled tokens of each weigh 1, the rest ``alpha``.
    """
    import torch

    shared = torch.minimum(policy.tokens[:pairs], policy.tokens[pairs:]).repeat(2)
    rank = torch.cumsum(policy.mask.long(), dim=-1)  # 1 for the first labelled token, 2 for the second, ...
    front = policy.mask & (rank <= shared.unsqueeze(-1))
    weights = torch.where(front, torch.ones_like(policy.token_logps), torch.full_like(policy.token_logps, alpha))
    return (policy.token_logps * weights * policy.mask).sum(-1)


@dataclass(frozen=True)
class DPOObjective:
    """The dpo loss of one batch of pairs (PairwiseCollator: the B chosen rows, then the B rejected rows)."""

    loss_type: str = "sigmoid"
    beta: float = 0.1
    ftx: float = 0.0
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    bco_weight: float = 0.0
    ld_alpha: float | None = None
    bco_baseline: RunningMean = field(default_factory=RunningMean, compare=False)

    @classmethod
    def from_config(cls, config) -> "DPOObjective":
        values = stage_settings(config, KEYS)
        ld_alpha = values["ld_alpha"]
        return cls(loss_type=values["pref_loss"], beta=float(values["pref_beta"]), ftx=float(values["pref_ftx"]),
                   label_smoothing=float(values["dpo_label_smoothing"]), simpo_gamma=float(values["simpo_gamma"]),
                   bco_weight=float(values["pref_bco_weight"] or 0.0),
                   ld_alpha=None if ld_alpha is None else float(ld_alpha))

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
        if self.bco_weight > 0 and self.needs_reference:
            names += ("bco_loss",)
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
        if self.ld_alpha is not None:
            policy = SequenceLogps(length_desensitised(policy, pairs, self.ld_alpha), policy.tokens)
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
            if self.bco_weight > 0:
                batch_reward = trainer.mean_across_processes(torch.cat((chosen_rewards, rejected_rewards)).mean().detach())
                delta = self.bco_baseline.update(float(batch_reward))
                bco = -F.logsigmoid(chosen_rewards - delta) - F.logsigmoid(-(rejected_rewards - delta))
                losses = (losses + self.bco_weight * bco) / (1 + self.bco_weight)
                metrics["bco_loss"] = bco
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
