"""Pack several supervised samples into one row of at most ``cutoff_len`` tokens.

``packing: true``: samples are concatenated and attend to each other (LLaMA-Factory's packing).
``neat_packing: true``: each packed row also gets ``position_ids`` that restart at 0 for every
sample. The collator then passes ``position_ids`` without an ``attention_mask`` (and with
``use_cache=False``), and transformers' models build a block-diagonal causal mask from the restarts
(``find_packed_sequence_indices`` in ``transformers.masking_utils``, for eager, sdpa and flex
attention; flash-attention takes the same restarts as varlen boundaries), so no token sees another
sample: the loss equals the unpacked loss (tests/test_data_packing.py). transformers skips that
detection when the model holds a KV cache, which a causal LM creates whenever ``use_cache`` is on
(its config default, even in training): hence ``use_cache=False`` in every neat-packed batch.

In both modes the label of each sample's first token is -100: unpacked, no token predicts it, and
packed it would be predicted from the previous sample's last token.

Samples are grouped per ``datasets.map`` batch (``preprocessing_batch_size`` rows) by greedy
first-fit-decreasing, as LLaMA-Factory does.
"""

from __future__ import annotations

import bisect

from .template import IGNORE_INDEX


def greedy_knapsack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group indices so each group's total length is at most ``capacity``: repeatedly fill a bin
    with the longest sample that still fits."""
    remaining = sorted((length, index) for index, length in enumerate(lengths))
    bins: list[list[int]] = []
    while remaining:
        room, group = capacity, []
        while remaining:
            position = bisect.bisect_right(remaining, (room, len(lengths))) - 1
            if position < 0:
                break
            length, index = remaining.pop(position)
            room -= length
            group.append(index)
        if not group:  # longer than a row: a row of its own (truncated upstream, so only if capacity shrank)
            group.append(remaining.pop()[1])
        bins.append(group)
    return bins


def pack_batch(batch: dict, *, cutoff_len: int, neat: bool) -> dict:
    lengths = [len(ids) for ids in batch["input_ids"]]
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    if neat:
        out["position_ids"] = []
    for group in greedy_knapsack(lengths, cutoff_len):
        input_ids, labels, positions = [], [], []
        for index in sorted(group):
            ids = batch["input_ids"][index]
            input_ids += ids
            labels += [IGNORE_INDEX] + list(batch["labels"][index][1:])
            positions += range(len(ids))
        out["input_ids"].append(input_ids)
        out["attention_mask"].append([1] * len(input_ids))
        out["labels"].append(labels)
        if neat:
            out["position_ids"].append(positions)
    return out
