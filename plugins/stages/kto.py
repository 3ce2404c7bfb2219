"""kto: learn from single replies labelled good (desirable) or bad (undesirable), no pairs needed.

The KTO loss (Ethayarajh et al., 2024), as LLaMA-Factory computes it. With ``r`` the policy's
log-ratio to the reference for a reply and ``z`` a batch estimate of KL(policy || reference):

- desirable rows: ``kto_chosen_weight * (1 - sigmoid(beta * (r - z)))``
- undesirable rows: ``kto_rejected_weight * (1 - sigmoid(beta * (z - r)))``

``z`` is measured on the ``kl_*`` rows the data pipeline builds (each prompt paired with another
row's reply, so it says how far the policy drifted on replies it is not trained towards), averaged
over the batch (and the processes), clamped at 0 and detached: it is a baseline, not a target. A
batch holding only desirable or only undesirable rows is fine: each row's loss needs only ``z``.
``pref_ftx`` adds the desirable replies' per-token NLL. Reference handling is dpo's (_preference.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge import ConfigKey, StageSpec, hookimpl

from ._preference import SHARED_KEYS, media_inputs, shared_problems, stage_settings

KEYS = SHARED_KEYS + (
    ConfigKey("kto_chosen_weight", float, 1.0, "Weight of the desirable rows' loss."),
    ConfigKey("kto_rejected_weight", float, 1.0, "Weight of the undesirable rows' loss."),
)


def validate(config, plan) -> list[str]:
    values = stage_settings(config, KEYS)
    problems = shared_problems(config, plan, values, "kto", needs_reference=True)
    for key in ("kto_chosen_weight", "kto_rejected_weight"):
        value = values[key]
        if value <= 0:
            problems.append(f"{key} must be positive, got {value}: it weighs the loss of the "
                            f"{'desirable' if 'chosen' in key else 'undesirable'} rows (leave those rows out of "
                            "the data instead of weighing them 0)")
    return problems


@dataclass(frozen=True)
class KTOObjective:
    """The kto loss of one batch (KTOCollator: the rows, their ``kl_*`` rows and ``kto_tags``)."""

    beta: float = 0.1
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0
    ftx: float = 0.0

    needs_reference = True

    @classmethod
    def from_config(cls, config) -> "KTOObjective":
        values = stage_settings(config, KEYS)
        return cls(beta=float(values["pref_beta"]), desirable_weight=float(values["kto_chosen_weight"]),
                   undesirable_weight=float(values["kto_rejected_weight"]), ftx=float(values["pref_ftx"]))

    @property
    def metric_names(self) -> tuple[str, ...]:
        names = ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected", "kl")
        return names + (("sft_loss",) if self.ftx > 0 else ())

    def derived_metrics(self, averages: dict) -> dict:
        if "rewards/chosen" in averages and "rewards/rejected" in averages:
            return {"rewards/margins": averages["rewards/chosen"] - averages["rewards/rejected"]}
        return {}

    def __call__(self, trainer, model, inputs):
        import torch

        rows = (inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
        kl_rows = (inputs["kl_input_ids"], inputs["kl_attention_mask"], inputs["kl_labels"])
        desirable = inputs["kto_tags"].bool()
        media, kl_media = media_inputs(inputs), media_inputs(inputs, "kl_")  # a KL row keeps its row's images
        policy = trainer.policy_logps(model, *rows, **media)
        with torch.no_grad():
            policy_kl = trainer.policy_logps(model, *kl_rows, **kl_media).total
        reference = trainer.reference_logps(model, *rows, **media).total
        reference_kl = trainer.reference_logps(model, *kl_rows, **kl_media).total
        kl = trainer.mean_across_processes((policy_kl - reference_kl).mean()).clamp(min=0).detach()
        log_ratio = policy.total - reference
        desirable_losses = self.desirable_weight * (1 - torch.sigmoid(self.beta * (log_ratio - kl)))
        undesirable_losses = self.undesirable_weight * (1 - torch.sigmoid(self.beta * (kl - log_ratio)))
        loss = torch.where(desirable, desirable_losses, undesirable_losses).mean()
        metrics = {
            "rewards/chosen": self.beta * log_ratio[desirable],
            "rewards/rejected": self.beta * log_ratio[~desirable],
            "logps/chosen": policy.total[desirable],
            "logps/rejected": policy.total[~desirable],
            "kl": kl,
        }
        if self.ftx > 0 and bool(desirable.any()):
            sft_loss = -policy.mean[desirable]
            loss = loss + self.ftx * sft_loss.mean()
            metrics["sft_loss"] = sft_loss
        return loss, metrics


def run(ctx):
    from ._preference import run_preference_stage

    return run_preference_stage(ctx, "kto", KTOObjective.from_config(ctx.config))


@hookimpl
def tuneforge_stages():
    return [StageSpec(
        name="kto",
        description="KTO: learn from single replies labelled desirable or undesirable (kto_tag).",
        keys=KEYS,
        run=run,
        validate=validate,
        data_kind="kto",
        takes_media=True,
        pairs_rows=True,
        needs_reference=lambda config: True,
    )]
