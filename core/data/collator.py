"""Batch features into tensors: right-pad to the longest row of the batch.

- :class:`PadCollator` (pt, sft): ``input_ids``, ``attention_mask``, ``labels``. Neat-packed rows carry
  ``position_ids``: the batch then has ``position_ids`` (pads at 0), no ``attention_mask`` and
  ``use_cache=False``, which is how transformers' models are told to keep packed samples apart
  (see packing.py).
- :class:`PairwiseCollator` (dpo-like stages): chosen rows, then rejected rows, in one batch of 2B
  (LLaMA-Factory's layout).
- :class:`KTOCollator`: the rows, their ``kl_*`` rows and ``kto_tags``.
- :class:`PromptCollator` (ppo, grpo): prompts *left*-padded, so every row's reply is generated
  right after its last prompt token; ``reference_ids`` right-padded with the pad id.
"""

from __future__ import annotations

from .template import IGNORE_INDEX


def _pad(rows: list[list[int]], value: int, width: int) -> list[list[int]]:
    return [list(row) + [value] * (width - len(row)) for row in rows]


class PadCollator:
    def __init__(self, pad_token_id: int, label_pad_token_id: int = IGNORE_INDEX, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id if pad_token_id is not None else 0
        self.label_pad_token_id = label_pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def width(self, rows: list[list[int]]) -> int:
        width = max(len(row) for row in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return width

    def pad(self, features: list[dict], prefix: str = "") -> dict:
        import torch

        ids = [f[f"{prefix}input_ids"] for f in features]
        width = self.width(ids)
        batch = {
            f"{prefix}input_ids": _pad(ids, self.pad_token_id, width),
            f"{prefix}labels": _pad([f[f"{prefix}labels"] for f in features], self.label_pad_token_id, width),
        }
        if f"{prefix}position_ids" in features[0]:
            batch[f"{prefix}position_ids"] = _pad([f[f"{prefix}position_ids"] for f in features], 0, width)
        else:
            masks = [f.get(f"{prefix}attention_mask") or [1] * len(f[f"{prefix}input_ids"]) for f in features]
            batch[f"{prefix}attention_mask"] = _pad(masks, 0, width)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}

    #: (MediaHandler, model path, tokenizer) for a multimodal model: the rows' media files become the
    #: handler's model inputs (pixel_values, ...) and ``mm_token_type_ids`` marks the media tokens.
    media = None

    def add_media(self, batch: dict, features: list[dict], prefixes: tuple[str, ...] = ("",)) -> dict:
        """The handler's model inputs for the rows' files (``features``, in the order of the batch's
        rows), and ``{prefix}mm_token_type_ids`` for each ``{prefix}input_ids``."""
        import torch

        handler, model_path, tokenizer = self.media
        rows = [{c: f.get(c) or [] for c in handler.modalities} for f in features]
        if any(files for row in rows for files in row.values()):
            batch.update(handler.inputs(rows, model_path, tokenizer))
        key = handler.token_types_key(model_path)
        if key is None:
            return batch
        types = handler.media_token_ids(tokenizer)
        for prefix in prefixes:
            ids = batch[f"{prefix}input_ids"]
            kinds = torch.zeros_like(ids)
            for token, kind in types.items():
                kinds[ids == token] = kind
            batch[f"{prefix}{key}"] = kinds
        return batch

    def __call__(self, features: list[dict]) -> dict:
        batch = self.pad(features)
        if self.media is not None:
            batch = self.add_media(batch, features)
        if "position_ids" in batch:
            # transformers builds the per-sample mask from position_ids only without a KV cache,
            # and a causal LM creates one whenever use_cache is on (its config default).
            batch["use_cache"] = False
        return batch


class PairwiseCollator(PadCollator):
    def __call__(self, features: list[dict]) -> dict:
        rows = [
            {name: f[f"{side}_{name}"] for name in ("input_ids", "attention_mask", "labels")}
            for side in ("chosen", "rejected") for f in features
        ]
        batch = self.pad(rows)
        if self.media is not None:  # the chosen rows, then the rejected rows: each pair's prompt media twice
            batch = self.add_media(batch, list(features) * 2)
        return batch


class KTOCollator(PadCollator):
    def __call__(self, features: list[dict]) -> dict:
        import torch

        batch = self.pad(features)
        batch.update(self.pad(features, prefix="kl_"))
        batch["kto_tags"] = torch.tensor([bool(f["kto_tags"]) for f in features])
        if self.media is not None:  # a KL row keeps its row's prompt, so its media: one set of pixels serves both
            batch = self.add_media(batch, features, prefixes=("", "kl_"))
        return batch


class PromptCollator(PadCollator):
    def __call__(self, features: list[dict]) -> dict:
        import torch

        ids = [f["input_ids"] for f in features]
        width = self.width(ids)
        left = [[self.pad_token_id] * (width - len(row)) + list(row) for row in ids]
        mask = [[0] * (width - len(row)) + [1] * len(row) for row in ids]
        references = [f.get("reference_ids") or [] for f in features]
        batch = {"input_ids": torch.tensor(left, dtype=torch.long), "attention_mask": torch.tensor(mask, dtype=torch.long)}
        ref_width = max(1, max(len(r) for r in references))
        batch["reference_ids"] = torch.tensor(_pad(references, self.pad_token_id, ref_width), dtype=torch.long)
        return batch


COLLATORS = {"text": PadCollator, "supervised": PadCollator, "pairwise": PairwiseCollator, "kto": KTOCollator, "prompt": PromptCollator}
