"""LLaMA-Factory's SFT loss variants, as the sft stage's ``compute_loss_func``.

- DFT (``use_dft_loss``, Dynamic Fine-Tuning): each target token's cross-entropy is weighted by the
  model's own (detached) probability of that token, so tokens the model already finds likely count
  more and outliers less; the gradient becomes that of the expected probability, not its log.
- EAFT (``use_eaft_loss``, Entropy-Adaptive Fine-Tuning): the weight is the normalised entropy of the
  model's top-20 prediction, raised to ``eaft_alpha``: confident positions count less.
- ASFT (``use_asft_loss``, Anchored SFT): DFT plus ``asft_alpha`` times the KL divergence between the
  reference model (the model as training started) and the model being trained, which keeps DFT from
  drifting.

Token losses are summed and divided by the number of target tokens of the whole accumulated batch
(``num_items_in_batch``), as the default loss is, so gradient accumulation does not change the result.
Formulas follow LLaMA-Factory's trainer utilities so losses compare one to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100
#: EAFT: entropy of the top-20 distribution is at most log(20) ~ 3.0; dividing by 3 puts it near [0, 1].
EAFT_TOPK = 20
EAFT_SCALE = 3.0


def _shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, vocab) logits and (N,) next-token targets, padding the label row as causal LMs do."""
    logits = logits.float()
    labels = F.pad(labels, (0, 1), value=IGNORE)[..., 1:].contiguous()
    return logits.view(-1, logits.size(-1)), labels.view(-1).to(logits.device)


def _reduce(weighted: torch.Tensor, num_items_in_batch) -> torch.Tensor:
    if num_items_in_batch is None:
        return weighted.mean()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(weighted.device)
    return weighted.sum() / num_items_in_batch


def token_weights(kind: str, logits: torch.Tensor, token_loss: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """The detached per-token weight of each variant, for the valid target tokens."""
    with torch.no_grad():
        if kind in ("dft", "asft"):
            return torch.exp(-token_loss)  # p(target)
        if kind == "eaft":
            top = torch.topk(logits, k=min(EAFT_TOPK, logits.size(-1)), dim=-1).values
            logp = top - torch.logsumexp(top, dim=-1, keepdim=True)
            entropy = -(logp.exp() * logp).sum(dim=-1)
            return torch.pow(entropy / EAFT_SCALE, alpha)
    raise ValueError(f"unknown SFT loss variant {kind!r}")


def weighted_loss(kind: str, logits, labels, num_items_in_batch=None, alpha: float = 1.0, ref_logits=None,
                  asft_alpha: float = 0.0) -> torch.Tensor:
    flat, targets = _shifted(logits, labels)
    valid = targets != IGNORE
    if not valid.any():
        return flat.sum() * 0.0  # keeps the graph: a batch without targets contributes nothing
    token_loss = F.cross_entropy(flat[valid], targets[valid], reduction="none")
    weights = token_weights(kind, flat[valid], token_loss, alpha)
    loss = _reduce(token_loss * weights, num_items_in_batch)
    if kind == "asft" and ref_logits is not None:
        ref_flat, _ = _shifted(ref_logits, labels)
        # KL(ref || model) per target position, as LLaMA-Factory's F.kl_div(log p, q) computes it.
        kl = F.kl_div(F.log_softmax(flat[valid], -1), F.softmax(ref_flat[valid], -1), reduction="none").sum(-1)
        loss = loss + asft_alpha * _reduce(kl, num_items_in_batch)
    return loss


def selected(config) -> str | None:
    for kind in ("asft", "eaft", "dft"):
        if config.get(f"use_{kind}_loss"):
            return kind
    return None


def compute_loss_func(ctx, trainer_ref: dict):
    """The Trainer's ``compute_loss_func`` for the configured variant (None: the model's own loss)."""
    config = ctx.config
    kind = selected(config)
    if kind is None:
        return None

    def loss_func(outputs, labels, num_items_in_batch=None):
        ref = trainer_ref.get("ref_logits") if kind == "asft" else None
        return weighted_loss(kind, outputs["logits"], labels, num_items_in_batch, alpha=float(config.eaft_alpha),
                             ref_logits=ref, asft_alpha=float(config.asft_alpha))

    return loss_func


def asft_trainer_class(base):
    """``base`` whose compute_loss first runs the reference model on the same inputs (ASFT's anchor).

    The reference is the model as training started: the base model with the adapter switched off for
    PEFT methods, else a frozen copy taken when the trainer is built.
    """

    class AsftTrainer(base):
        tuneforge_loss_ref: dict | None = None
        tuneforge_ref_model = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            import contextlib

            unwrapped = self.accelerator.unwrap_model(model)
            ref_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            with torch.no_grad():
                if self.tuneforge_ref_model is not None:
                    ref_logits = self.tuneforge_ref_model(**ref_inputs).logits
                else:
                    disable = getattr(unwrapped, "disable_adapter", None)
                    with disable() if disable is not None else contextlib.nullcontext():
                        ref_logits = model(**ref_inputs).logits
            self.tuneforge_loss_ref["ref_logits"] = ref_logits.detach()
            try:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            finally:
                self.tuneforge_loss_ref["ref_logits"] = None

    AsftTrainer.__name__ = AsftTrainer.__qualname__ = f"Asft{base.__name__}"
    return AsftTrainer


def frozen_reference(model):
    """A frozen copy of a non-PEFT model, the ASFT anchor (PEFT models switch their adapter off instead)."""
    import copy

    if hasattr(model, "disable_adapter"):
        return None
    ref = copy.deepcopy(model).eval()
    for param in ref.parameters():
        param.requires_grad_(False)
    return ref
