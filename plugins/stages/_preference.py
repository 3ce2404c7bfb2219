"""What the dpo and kto stages share: their common keys and checks, the per-sequence log-probabilities
of the labelled tokens, the reference model, and a Trainer that logs the preference metrics.

Both stages score whole replies: a reply's log-probability is the sum of the log-probabilities of
its labelled tokens (the prompt is labelled -100 by the data pipeline). Their losses compare the
policy's scores with a *reference* model's scores of the same rows (but for orpo and simpo, which
need no reference). Where the reference comes from:

- ``ref_model`` set: that model (+ ``ref_model_adapters``, ``ref_model_quantization_bit``), loaded
  frozen the way the policy was (same loader, dtype and quantizer; see ``_models.load_frozen_model``);
- else, a LoRA-family policy (a PEFT model): the policy itself with its adapter disabled, so there is
  no second copy of the weights in memory;
- else (freeze, full and the other methods that change the base weights): a frozen second copy of
  the model training starts from.

The stage-specific loss is an *objective* object (``preference.DPOObjective``,
``kto.KTOObjective``) that the trainer calls; the trainer does the forwards, keeps the reference,
and averages the objective's metrics over each logging window (eval metrics get the ``eval_`` prefix).

Importing this module stays light (no torch): ``tuneforge check`` reads the keys and the checks
from here. The trainer class is built on first use, as the log callback in core/train/outputs.py is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneforge import ConfigKey

#: pref_beta, declared once for every stage that reads it (dpo, kto and grpo): plugins that share a
#: key must declare it identically. Its meaning and its value when unset are each stage's own, so the
#: declared default is None and :func:`stage_settings` / grpo fill in theirs.
PREF_BETA = ConfigKey(
    "pref_beta", float, None,
    "Preference loss temperature: how strongly the policy's log-ratio to the reference is rewarded "
    "(orpo: the weight of the odds-ratio term); grpo: the KL coefficient against the reference model. "
    "Unset: 0.1 for dpo and kto (LLaMA-Factory's default), 0.0 for grpo (no reference model is loaded).",
)

#: What dpo and kto use for a shared key whose declaration has no default.
UNSET_DEFAULTS = {"pref_beta": 0.1}

#: Keys both dpo and kto act on. Both specs declare them, so whichever stage runs, `tuneforge check`
#: counts them as used (a key declared by several plugins has one definition: this one).
SHARED_KEYS = (
    PREF_BETA,
    ConfigKey("pref_ftx", float, 0.0,
              "Weight of an SFT loss (mean per-token NLL of the chosen / desirable reply) added to the preference loss."),
    ConfigKey("ref_model", str, None, path="model", doc=
              "Reference model path. Unset: the policy with its LoRA adapter disabled, or a frozen copy of "
              "model_name_or_path for freeze/full tuning."),
    ConfigKey("ref_model_adapters", (str, list), None, "Adapter(s) to load onto ref_model (comma list to stack).", path="adapter"),
    ConfigKey("ref_model_quantization_bit", int, None,
              "Quantize ref_model on load to this many bits (with quantization_method)."),
)

REFERENCE_KEYS = ("ref_model", "ref_model_adapters", "ref_model_quantization_bit")


# --- settings and checks (no torch) ----------------------------------------------------------------------------


def stage_settings(config, keys: tuple[ConfigKey, ...]) -> dict[str, Any]:
    """Key name -> the user's value, else this stage's own default.

    A key several plugins declare has one default in the merged config (the first declarer's), and it
    need not be this stage's; a shared key declared without a default takes ``UNSET_DEFAULTS``.
    """
    values = {}
    for key in keys:
        value = config.get(key.name) if config.is_set(key.name) else None
        default = UNSET_DEFAULTS.get(key.name, key.default) if key.default is None else key.default
        values[key.name] = default if value is None else value
    return values


def shared_problems(config, plan, values: dict, stage: str, needs_reference: bool,
                    reason_no_reference: str = "") -> list[str]:
    """What dpo and kto cannot run with, found before anything loads (``values``: :func:`stage_settings`)."""
    from tuneforge.train.checks import evaluation_problems

    problems = evaluation_problems(config)
    beta = values["pref_beta"]
    if beta <= 0:
        problems.append(f"pref_beta must be positive, got {beta}: it scales the log-ratios the {stage} loss compares "
                        "(0 would make every pair equally good); LLaMA-Factory's default is 0.1")
    if values["pref_ftx"] < 0:
        problems.append(f"pref_ftx must be 0 or more, got {values['pref_ftx']}: it weighs an added SFT loss (0 turns it off)")
    if config.get("predict_with_generate"):
        problems.append(f"predict_with_generate: only the sft stage generates predictions; remove it ({stage} "
                        "evaluates with eval_loss and reward metrics: set val_size or eval_dataset)")
    if config.get("do_predict"):
        problems.append(f"do_predict: the {stage} stage has no prediction step; remove it and evaluate with "
                        "do_eval / val_size / eval_dataset (or predict afterwards with stage: sft and the trained model)")
    if not needs_reference:
        for key in REFERENCE_KEYS:
            if values[key] is not None:
                problems.append(f"{key} is set but {reason_no_reference} uses no reference model; remove {key}")
        return problems
    if values["ref_model"] is None:
        for key in REFERENCE_KEYS[1:]:
            if values[key] is not None:
                problems.append(f"{key} applies to ref_model, which is not set: set ref_model (e.g. to "
                                "model_name_or_path) or remove it")
        adapter = plan.method.spec.adapter
        if config.get("pissa_init") or (adapter is not None and adapter.disabled is None):
            problems.append("pissa_init: PiSSA moves the principal components of the base weights into the adapter, "
                            "so the model with its adapter disabled (the default reference) is not the original model; "
                            f"set ref_model: {config.get('model_name_or_path') or '<the base model>'} to use a frozen "
                            "copy of it as the reference")
    return problems


# --- log-probabilities --------------------------------------------------------------------------------------------


@dataclass
class SequenceLogps:
    """Per-row log-probability of the labelled tokens: their sum and how many there are."""

    total: Any  # (rows,) float32 tensor
    tokens: Any  # (rows,) long tensor
    #: (rows, positions) per-token log-probabilities (0 where unlabelled) and the labelled-position mask,
    #: for objectives that weight tokens differently (LD-DPO's ld_alpha).
    token_logps: Any = None
    mask: Any = None

    @property
    def mean(self):
        """Per-token average: what length-normalised losses (ipo, orpo, simpo) compare."""
        return self.total / self.tokens.clamp(min=1)


def sequence_logps(logits, labels, attention_mask=None) -> SequenceLogps:
    """Sum over each row of log p(label_t | tokens < t) for the labelled positions.

    Position t's logits predict token t+1. Unlabelled (-100) and padded positions count for nothing,
    whatever the label pad value is. Computed in float32, as a softmax over the vocabulary in bf16
    would lose the small differences the preference losses compare.
    """
    import torch

    from tuneforge.data.template import IGNORE_INDEX

    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    if attention_mask is not None:
        mask &= attention_mask[:, 1:].bool()
    logits = logits[:, :-1].float()
    picked = logits.gather(-1, targets.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    token_logps = (picked - torch.logsumexp(logits, dim=-1)) * mask
    return SequenceLogps(token_logps.sum(-1), mask.sum(-1), token_logps, mask)


def forward_logps(model, input_ids, attention_mask, labels, **media) -> SequenceLogps:
    """One forward of ``model`` over the rows, scored by :func:`sequence_logps`; ``media``: the rows'
    media inputs (pixel_values, image_grid_thw, mm_token_type_ids...; see :func:`media_inputs`)."""
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **media)
    return sequence_logps(outputs.logits, labels, attention_mask)


#: Batch fields that are rows or tags, not model inputs of their own.
_ROW_FIELDS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "position_ids")


def media_inputs(inputs: dict, prefix: str = "") -> dict:
    """The batch's media model inputs for the ``{prefix}input_ids`` rows (empty for text-only rows):
    the collator's pixel values & co., and those rows' own ``mm_token_type_ids``."""
    extra = {k: v for k, v in inputs.items() if k != "kto_tags" and not k.endswith(_ROW_FIELDS)}
    if f"{prefix}mm_token_type_ids" in inputs:
        extra["mm_token_type_ids"] = inputs[f"{prefix}mm_token_type_ids"]
    return extra


# --- the reference --------------------------------------------------------------------------------------------


@dataclass
class Reference:
    """Where the reference log-probs come from: ``kind`` is "none", "adapter-disabled" (the policy with
    its adapter off, ``model`` None) or "frozen-model" (``model`` is a frozen, eval-mode model)."""

    kind: str
    model: Any = None
    description: str = ""
    #: For "adapter-disabled": the method's ``AdapterSpec.disabled`` (a context manager over the policy).
    disabled: Any = None


def build_reference(ctx, needs_reference: bool) -> Reference:
    """The reference the config asks for (see the module docstring for the rule)."""
    from ._models import load_frozen_model

    config = ctx.config
    if not needs_reference:
        return Reference("none", description="none (this loss compares the policy's own scores)")
    if config.ref_model:
        model = load_frozen_model(ctx, config.ref_model, adapters=config.ref_model_adapters,
                                  quantization_bit=config.ref_model_quantization_bit)
        extra = f" + adapter(s) {config.ref_model_adapters}" if config.ref_model_adapters else ""
        return Reference("frozen-model", model, f"{config.ref_model}{extra} (ref_model, frozen)")
    adapter = ctx.plan.method.spec.adapter
    if adapter is not None and adapter.disabled is not None:
        return Reference("adapter-disabled", description="the policy with its adapter disabled (no second copy)",
                         disabled=adapter.disabled)
    model = load_frozen_model(ctx, config.model_name_or_path, adapters=config.adapter_name_or_path,
                              quantization_bit=config.quantization_bit)
    return Reference("frozen-model", model, f"a frozen copy of {config.model_name_or_path} "
                                            "(the method changes the base weights; set ref_model to use another)")


# --- metrics --------------------------------------------------------------------------------------------------


class MetricSums:
    """Running sums and counts of each metric's values since the last log.

    Every process keeps the same names in the same order (zeros where a batch had no value, e.g. no
    rejected rows in a kto batch), so the sums can be added across processes in one reduction; a
    metric's average is then exact over all the rows of the window, whatever the batches held.
    """

    def __init__(self, names: tuple[str, ...]):
        self.names = names
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, Any] = {}
        self.counts = dict.fromkeys(self.names, 0)

    def add(self, name: str, values) -> None:
        values = values.detach().float().reshape(-1)
        total = values.sum()
        self.sums[name] = total if name not in self.sums else self.sums[name] + total
        self.counts[name] += values.numel()

    def averages(self, accelerator) -> dict[str, float]:
        """The window's averages (across processes), then reset; metrics with no value are left out."""
        import torch

        device = accelerator.device
        sums = torch.stack([self.sums.get(n, torch.zeros((), device=device)).to(device) for n in self.names])
        counts = torch.tensor([self.counts[n] for n in self.names], dtype=torch.float32, device=device)
        if accelerator.num_processes > 1:
            sums, counts = accelerator.reduce(sums, "sum"), accelerator.reduce(counts, "sum")
        self.reset()
        averages, counts = (sums / counts.clamp(min=1)).tolist(), counts.tolist()
        return {name: value for name, value, count in zip(self.names, averages, counts) if count > 0}


# --- the trainer ----------------------------------------------------------------------------------------------


class PreferenceTraining:
    """Mixed into transformers' Trainer (see :func:`preference_trainer_class`): the loss is the
    objective's, reference scores come from :class:`Reference`, metrics go to the Trainer's logs.

    ``compute_loss`` returns a per-batch mean, so the Trainer divides it by the gradient accumulation
    steps (``loss_is_scaled_for_ga = False``) and does not count label tokens for a token-normalised
    loss (``model_accepts_loss_kwargs = False``).
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args, objective, reference: Reference, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.objective = objective
        self.reference = reference
        if reference.model is not None and not _placed_by_loader(reference.model):
            # A whole copy on each process's device, never wrapped (DDP/FSDP): it only runs forwards.
            reference.model.to(self.args.device)
        self.metric_sums = {mode: MetricSums(objective.metric_names) for mode in ("train", "eval")}

    # -- scores the objectives ask for

    def policy_logps(self, model, input_ids, attention_mask, labels, **media) -> SequenceLogps:
        return forward_logps(model, input_ids, attention_mask, labels, **media)

    def reference_logps(self, model, input_ids, attention_mask, labels, **media) -> SequenceLogps:
        """The reference's scores of the rows, without gradients (``model`` is the policy as the
        trainer holds it; its adapter is switched off for an "adapter-disabled" reference)."""
        import torch

        kind = self.reference.kind
        if kind == "none":
            raise RuntimeError(f"{type(self.objective).__name__} asked for reference scores but has no reference")
        with torch.no_grad():
            if kind == "frozen-model":
                return forward_logps(self.reference.model, input_ids, attention_mask, labels, **media)
            policy = self.accelerator.unwrap_model(model)
            was_training = policy.training
            policy.eval()  # no dropout: the reference scores the same rows the same way every time
            try:
                with self.reference.disabled(policy):
                    return forward_logps(policy, input_ids, attention_mask, labels, **media)
            finally:
                policy.train(was_training)

    def mean_across_processes(self, value):
        """A scalar's mean over every process (the kto KL estimate is a batch statistic)."""
        if self.accelerator.num_processes > 1:
            return self.accelerator.reduce(value.detach(), "mean")
        return value

    # -- Trainer overrides

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, metrics = self.objective(self, model, inputs)
        sums = self.metric_sums["train" if model.training else "eval"]
        for name, values in metrics.items():
            sums.add(name, values)
        return (loss, {}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the loss only (the metrics are recorded by compute_loss); nothing to generate."""
        import torch

        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self.metric_sums["eval"].reset()
        output = super().evaluation_loop(dataloader, description, prediction_loss_only=prediction_loss_only,
                                         ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        averages = self._window_averages("eval")
        output.metrics.update({f"{metric_key_prefix}_{name}": value for name, value in averages.items()})
        return output

    def log(self, logs, start_time=None):
        if "loss" in logs:  # a training log (evaluation logs carry eval_loss)
            logs.update(self._window_averages("train"))
        return super().log(logs, start_time)

    def _window_averages(self, mode: str) -> dict[str, float]:
        averages = self.metric_sums[mode].averages(self.accelerator)
        averages.update(self.objective.derived_metrics(averages))
        return averages


def _placed_by_loader(model) -> bool:
    """Quantized or device-mapped models stay where the loader put them (they cannot be moved)."""
    return bool(getattr(model, "is_quantized", False) or getattr(model, "hf_device_map", None))


_TRAINER_CLASS = None


def preference_trainer_class():
    """transformers' Trainer with :class:`PreferenceTraining` mixed in (transformers is imported here)."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is None:
        from transformers import Trainer

        _TRAINER_CLASS = type("PreferenceTrainer", (PreferenceTraining, Trainer), {"__doc__": PreferenceTraining.__doc__})
    return _TRAINER_CLASS


def run_preference_stage(ctx, data_kind: str, objective) -> dict:
    """Train ``objective`` on ``data_kind`` rows with the reference it needs; returns the run's metrics."""
    from tuneforge.data.dataset import build_datasets
    from tuneforge.train.hf_trainer import build_trainer, train_and_save

    data = build_datasets(ctx, data_kind)
    reference = build_reference(ctx, objective.needs_reference)
    print(f"reference model: {reference.description}", flush=True)
    trainer = build_trainer(ctx, data, base=preference_trainer_class(), objective=objective, reference=reference)
    return train_and_save(ctx, trainer)
