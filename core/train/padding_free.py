"""Padding-free batching for pt and sft: no compute and no memory spent on pad tokens.

A padded batch of B rows is B x longest-row tokens. Padding-free, the rows are concatenated into one
row of exactly their total length, with ``position_ids`` that restart at 0 for every row and no
``attention_mask``. transformers' models that build their masks with ``transformers.masking_utils``
read the restarts as sequence boundaries (``find_packed_sequence_indices``): eager and sdpa get a
block-diagonal causal mask, flash-attention gets varlen boundaries, so no token attends to another
row. Each row's first label is -100: padded, no token predicts it (the causal shift drops it);
flattened it would be predicted from the previous row's last token. The loss is then the padded
batch's loss, token for token (tests/test_padding_free.py checks per-step losses to 1e-5).

The batch also carries the row boundaries (``cu_seq_lens_q``/``_k``, ``max_length_q``/``_k``: the
flash-attention kwargs), so flash-attention reads them directly, and an sdpa model is switched for
training to row_attention.py's sdpa-per-row, which costs each row its own length instead of the
dense mask's batch length squared.

This is transformers' ``DataCollatorWithFlattening`` / TRL's ``padding_free`` layout; it differs from
``neat_packing`` in working per batch (rows stay rows in the data, no re-packing, no cutoff change).

When it is not exact, it is off and the run says why:
- models that keep state across tokens outside attention (Mamba/SSM and linear-attention hybrids)
  would carry it across rows; multimodal models take 3-D/extra position inputs;
- models whose code does not build masks through masking_utils would ignore the restarts;
- ``ignore_pad_token_for_loss: false`` trains on pad tokens, which a flattened batch has none of;
- ``packing``/``neat_packing`` already fill rows (they stay as they are).
With one row per batch there is nothing to remove, so it stays off.
"""

from __future__ import annotations

import inspect
import sys
from itertools import accumulate

from ..errors import ConfigError, Problem
from ..ranks import is_main_process
from . import row_attention
from .fused_loss import base_model

IGNORE_INDEX = -100

#: Attention implementations whose masks/kernels honour position-id restarts (masking_utils).
_EXACT_ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
#: Config attributes that betray recurrent state or extra position inputs that cross row boundaries.
_STATEFUL_MARKERS = ("mamba", "ssm", "linear_attn", "linear_conv", "conv_kernel", "vision_config", "audio_config",
                     "rope_deltas", "mrope")


class FlatteningCollator:
    """Features -> one row: ``input_ids``, ``labels`` and ``position_ids`` of shape (1, total tokens);
    with ``boundaries`` also the flash-attention kwargs that give where each row starts."""

    def __init__(self, pad_token_id: int | None = None, boundaries: bool = False):
        self.pad_token_id = pad_token_id
        self.boundaries = boundaries

    def __call__(self, features: list[dict]) -> dict:
        import torch

        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for feature in features:
            row = list(feature["input_ids"])
            ids += row
            labels += [IGNORE_INDEX] + list(feature["labels"][1:])
            positions += range(len(row))
        batch = {
            "input_ids": torch.tensor([ids], dtype=torch.long),
            "labels": torch.tensor([labels], dtype=torch.long),
            "position_ids": torch.tensor([positions], dtype=torch.long),
            # transformers detects the restarts only without a KV cache (see data/packing.py)
            "use_cache": False,
        }
        if self.boundaries:
            lengths = [len(feature["input_ids"]) for feature in features]
            starts = torch.tensor([0, *accumulate(lengths)], dtype=torch.int32)
            batch.update(cu_seq_lens_q=starts, cu_seq_lens_k=starts, max_length_q=max(lengths), max_length_k=max(lengths))
        return batch


def model_problem(model) -> str | None:
    """Why ``model`` cannot take flattened rows exactly, or None when it can."""
    base = base_model(model)
    config = getattr(base, "config", None)
    if config is None:
        return f"{type(base).__name__} has no transformers config"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder models are not causal language models"
    attn = getattr(config, "_attn_implementation", None) or "eager"
    if attn not in _EXACT_ATTENTION:
        return f"attention implementation {attn!r} is not known to keep flattened rows apart"
    names = [n.lower() for n in vars(config)] + [n.lower() for n in (getattr(config, "layer_types", None) or [])
                                                    if isinstance(n, str)]
    marker = next((m for m in _STATEFUL_MARKERS if any(m in n for n in names)), None)
    if marker is not None:
        return f"model type {getattr(config, 'model_type', '?')!r} has {marker} state or inputs that would cross row boundaries"
    if "position_ids" not in inspect.signature(base.forward).parameters:
        return f"{type(base).__name__}.forward takes no position_ids"
    # the mask must come from masking_utils, which reads position-id restarts as sequence boundaries
    modules = {sys.modules.get(type(m).__module__) for m in (base, getattr(base, "model", None)) if m is not None}
    if not any(hasattr(mod, "create_causal_mask") or hasattr(mod, "create_sliding_window_causal_mask")
               for mod in modules if mod is not None):
        return f"{type(base).__name__}'s code does not build its attention mask with transformers.masking_utils"
    return None


def decide(ctx, model, collator, batch_size: int) -> tuple[bool, str]:
    """Whether this run flattens its training batches, and why (said to the user either way)."""
    from ..data.collator import PadCollator

    config = ctx.config
    wanted = config.get("padding_free")
    if wanted is False:
        return False, "padding_free: false"
    if type(collator) is not PadCollator:
        return False, "this stage's batches are not plain rows"
    why_not = None
    if config.get("packing") or config.get("neat_packing"):
        why_not = "packing already fills the rows"
    elif collator.label_pad_token_id != IGNORE_INDEX:
        why_not = "ignore_pad_token_for_loss: false trains on pad tokens"
    else:
        why_not = model_problem(model)
    if why_not is not None:
        if wanted:
            raise ConfigError([Problem("padding_free", f"true cannot be exact here: {why_not}; remove padding_free "
                                       "or set it to false", config.where("padding_free"))])
        return False, why_not
    if batch_size <= 1 and not wanted:
        return False, "one row per batch has no padding to remove"
    return True, "rows concatenated without pad tokens, attention kept within each row"


def apply(ctx, trainer, model, collator) -> None:
    """Give ``trainer`` a flattening collator for its training batches when :func:`decide` says so.

    Evaluation and prediction keep the padded collator (generation needs rows).
    """
    on, why = decide(ctx, model, collator, trainer.args.per_device_train_batch_size)
    if not on:
        if ctx.config.get("padding_free") is None and trainer.args.per_device_train_batch_size > 1 \
                and type(collator).__name__ == "PadCollator" and is_main_process():
            print(f"padding-free batching: off ({why})", flush=True)
        return
    base = base_model(model)
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(base.forward).parameters.values())
    trainer.tuneforge_train_collator = FlatteningCollator(collator.pad_token_id, boundaries=takes_kwargs)
    if takes_kwargs and getattr(base.config, "_attn_implementation", None) == "sdpa":
        _attention_per_row_while_training(trainer, base)
    if trainer.args.include_num_input_tokens_seen == "non_padding":
        # a flattened batch has no padding; counting ids != pad would miss real tokens equal to the pad id
        trainer.args.include_num_input_tokens_seen = "all"
    if is_main_process():
        print(f"padding-free batching: on ({why}; padding_free: false to pad instead)", flush=True)


def _attention_per_row_while_training(trainer, model) -> None:
    """sdpa per row (row_attention.py) from the start of training to its end; then sdpa again, so
    what is saved, exported or generated afterwards is the model as loaded."""
    from transformers import TrainerCallback

    class PlainAttentionAfterTraining(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            model.set_attn_implementation(row_attention.register())

        def on_train_end(self, args, state, control, **kwargs):
            model.set_attn_implementation("sdpa")

    trainer.add_callback(PlainAttentionAfterTraining())


def training_kwargs(ctx, kwargs: dict) -> None:
    """``group_by_length: true`` (transformers 4's name, which LLaMA-Factory configs carry) as transformers 5 says it."""
    if ctx.config.get("group_by_length") and "train_sampling_strategy" not in kwargs:
        kwargs["train_sampling_strategy"] = "group_by_length"
