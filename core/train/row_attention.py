"""Attention for a flattened (padding-free) batch that costs each row its own length, not the batch's.

A padding-free batch is one long row of several sequences. Flash-attention's varlen kernels take the
sequence boundaries and skip the attention between sequences; sdpa (CPU, and GPUs without
flash-attention) is given a dense block-diagonal mask over the whole batch instead, so it computes
every query against every key of the batch and masks most of them away: with four rows, four times
the attention a padded batch of the same rows would cost, and sdpa's masked kernel is slower than its
causal one. This implementation is sdpa run once per row with ``is_causal``: the same attention (the
mask it skips is exactly the block-diagonal causal mask masking_utils builds from the position
restarts), for the cost of the rows. The boundaries come from the batch (``cu_seq_lens_q``, the
flash-attention kwarg the flattening collator adds); without them, or with a padded batch, a KV
cache or anything else, it is transformers' sdpa unchanged.

Registered with transformers' attention and mask interfaces under :data:`NAME`; padding_free.py
switches an sdpa model to it for training and back afterwards.
"""

from __future__ import annotations

NAME = "tuneforge_sdpa_rows"


def _sliding_mask(length: int, window: int, device):
    import torch

    i = torch.arange(length, device=device)
    return (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)


def rows_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """sdpa per row of a flattened batch (see the module docstring); transformers' sdpa otherwise."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.pop("cu_seq_lens_q", None)
    kwargs.pop("cu_seq_lens_k", None)
    length = query.shape[2]
    if (bounds is None or query.shape[0] != 1 or key.shape[2] != length or kwargs.get("position_bias") is not None
            or not getattr(module, "is_causal", True) or int(bounds[-1]) != length):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    edges = bounds.tolist()
    outputs = []
    for start, end in zip(edges[:-1], edges[1:]):
        mask = _sliding_mask(end - start, int(window), query.device) if window and end - start > int(window) else None
        out, _ = sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], mask,
                                        dropout=dropout, scaling=scaling, is_causal=mask is None, **kwargs)
        outputs.append(out)
    return torch.cat(outputs, dim=1), None


def register() -> str:
    """Make :data:`NAME` an attention implementation transformers knows (idempotent); returns it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, rows_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME
