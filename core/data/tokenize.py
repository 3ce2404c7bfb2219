"""Turn converted examples into model inputs: ids and labels for each kind of stage.

The functions named ``*_batch`` take a batch of examples (``{"_example": [...]}``: JSON strings, the
column :mod:`tuneforge.data.dataset` maps over with ``datasets.map(batched=True)``, or the example
dicts themselves when it tokenises a list in this process) and return the feature columns,
LLaMA-Factory's names throughout:

- supervised: ``input_ids``, ``attention_mask``, ``labels`` (prompt tokens -100 unless
  ``train_on_prompt``; ``mask_history`` trains only the last turn; truncation to ``cutoff_len`` is the
  template's, which drops later turns first and never cuts a prompt from its response); rows left
  with no trained token are dropped (and counted by the caller);
- text (pre-training): every text plus EOS, concatenated and cut into ``cutoff_len`` blocks (the
  last, shorter block of each batch is kept); with ``packing: false``, each text truncated alone;
- pairwise: ``chosen_*`` and ``rejected_*`` ids/mask/labels, only the reply trained;
- kto: the conversation's ids/mask/labels, ``kl_*`` the same prompt with another row's reply (the
  batch reversed, as LLaMA-Factory does) for the KL estimate, and ``kto_tags``;
- prompt (ppo, grpo: the model writes the replies): ``input_ids``/``attention_mask`` of the conversation
  up to where the assistant's reply starts, and ``reference_ids``, the dataset's own reply (reward
  functions may compare against it); rows whose prompt alone exceeds ``cutoff_len`` are dropped
  (and counted by the caller), never cut, since a cut prompt asks a different question.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import chain

from .media import mask_media_labels
from .template import IGNORE_INDEX, Template

#: What the whole length is measured against when the doctor wants untruncated lengths.
NO_CUTOFF = 1 << 30


@dataclass(frozen=True)
class Settings:
    """The config values tokenisation depends on (they are part of the cache key)."""

    cutoff_len: int
    train_on_prompt: bool = False
    mask_history: bool = False
    enable_thinking: bool = True
    default_system: str | None = None
    packing: bool = False  # text: concatenate-and-chunk; supervised: many samples per row
    neat_packing: bool = False

    @classmethod
    def from_config(cls, config, kind: str) -> "Settings":
        neat = bool(config.neat_packing) and kind == "supervised"
        packing = config.packing
        if kind == "text":
            packing = True if packing is None else bool(packing)  # pre-training concatenates by default
        else:
            packing = bool(packing or neat) and kind == "supervised"
        return cls(
            cutoff_len=int(config.cutoff_len),
            train_on_prompt=bool(config.train_on_prompt),
            mask_history=bool(config.mask_history),
            enable_thinking=True if config.enable_thinking is None else bool(config.enable_thinking),
            default_system=config.default_system,
            packing=packing,
            neat_packing=neat,
        )


@lru_cache(maxsize=None)
def _parameters(cls, method: str) -> tuple[frozenset, bool]:
    params = inspect.signature(getattr(cls, method)).parameters
    return frozenset(params), any(p.kind is p.VAR_KEYWORD for p in params.values())


def template_kwargs(template, method: str, **wanted) -> dict:
    """The keyword arguments of ``wanted`` that ``template.<method>`` accepts.

    Templates from plugins may predate a keyword (tools, mask_history, enable_thinking); they get
    only what they take. Values at their defaults are what such a template does anyway.
    """
    names, var_kw = _parameters(type(template), method)
    return {k: v for k, v in wanted.items() if var_kw or k in names}


def encode_conversation(template, tokenizer, example: dict, settings: Settings, *, cutoff_len: int | None = None,
                        mask_history: bool | None = None) -> tuple[list[int], list[int]]:
    """Ids and labels of one conversation example (supervised shape), through the template."""
    system = example.get("system") or settings.default_system
    kwargs = template_kwargs(
        template, "encode_supervised",
        tools=example.get("tools") or None,
        mask_history=settings.mask_history if mask_history is None else mask_history,
        enable_thinking=settings.enable_thinking,
    )
    return template.encode_supervised(
        tokenizer, example["messages"], system, settings.cutoff_len if cutoff_len is None else cutoff_len,
        settings.train_on_prompt, **kwargs,
    )


def encode_counted(template, tokenizer, example: dict, settings: Settings, *,
                   mask_history: bool | None = None) -> tuple[list[int], list[int], bool]:
    """Ids, labels, and whether ``cutoff_len`` cut the conversation. A conversation that fits is
    encoded once (uncut, it is what the cut encoding gives); only a long one is encoded twice."""
    ids, labels = encode_conversation(template, tokenizer, example, settings, cutoff_len=NO_CUTOFF, mask_history=mask_history)
    if len(ids) <= settings.cutoff_len:
        return ids, labels, False
    ids, labels = encode_conversation(template, tokenizer, example, settings, mask_history=mask_history)
    return ids, labels, True


#: The column the ``*_batch`` functions add with ``report=True``: whether cutoff_len cut the row. The
#: caller counts it (`train` says how many rows were truncated, as `data` does) and removes it.
TRUNCATED = "_truncated"


def _reply(example: dict, key: str) -> dict:
    return {**example, "messages": example["messages"] + [{"role": "assistant", "content": example[key]}]}


def _trained(labels: list[int]) -> bool:
    return labels.count(IGNORE_INDEX) != len(labels)


def examples_of(batch: dict) -> list[dict]:
    """The batch's examples: its ``_example`` items, parsed where they are JSON strings."""
    return [item if isinstance(item, dict) else json.loads(item) for item in batch["_example"]]


def _media_of(example: dict, media) -> dict[str, list[str]]:
    return {c: example[c] for c in media.modalities if example.get(c)} if media is not None else {}


def expand_media(example: dict, media, model_path: str, tokenizer) -> dict:
    """The example with its media placeholders rewritten into the model's media tokens (unchanged
    without a media handler or media)."""
    files = _media_of(example, media)
    if not files:
        return example
    return {**example, "messages": media.expand(example["messages"], files, model_path, tokenizer)}


def supervised_batch(batch: dict, *, template, tokenizer, settings: Settings, media=None, model_path: str = "",
                     report: bool = False, arrow: bool = False):
    """A batch of conversations is rendered to text pieces and every piece encoded in one tokenizer
    call when :func:`batch_encodable` says the ids cannot differ from one call per piece (the features
    are the same; tests/test_batched_tokenize.py); otherwise row by row.

    ``media`` (the template's MediaHandler, multimodal models): placeholders become the model's
    media tokens before encoding, their labels are masked, and the row keeps its files in ``images``
    (the collator turns them into pixel values). A row whose media tokens ``cutoff_len`` would cut is
    dropped: a partial image cannot be fed to the model. ``arrow``: an Arrow table where the batched path
    can build one without per-row lists (:func:`as_arrow` takes it as it is)."""
    examples = examples_of(batch)
    if media is None and batch_encodable(template, tokenizer):
        return _reported(_supervised_batched(examples, template, tokenizer, settings, arrow=arrow), report)
    return _reported(_supervised_rows(examples, template, tokenizer, settings, media, model_path), report)


def _supervised_rows(examples: list[dict], template, tokenizer, settings: Settings, media=None, model_path: str = "") -> dict:
    """:func:`supervised_batch` one row at a time (media rows, and templates or tokenizers that cannot batch)."""
    out = {"input_ids": [], "attention_mask": [], "labels": [], TRUNCATED: []}
    if media is not None:
        out.update({c: [] for c in media.modalities})
        media_ids = media.media_token_ids(tokenizer)
    for example in examples:
        files = _media_of(example, media)
        example = expand_media(example, media, model_path, tokenizer)
        input_ids, labels, cut = encode_counted(template, tokenizer, example, settings)
        if media is not None:
            labels = mask_media_labels(input_ids, labels, media_ids)
            if not _media_whole(input_ids, example, media_ids, tokenizer):
                continue  # truncation cut into the media tokens
        if _trained(labels):
            out["input_ids"].append(input_ids)
            out["attention_mask"].append([1] * len(input_ids))
            out["labels"].append(labels)
            out[TRUNCATED].append(cut)
            if media is not None:
                for column in media.modalities:
                    out[column].append(files.get(column, []))
    return out


#: The Template methods whose composition the batched path reproduces; a template class that overrides
#: any of them encodes its own way and gets the per-row path.
_BATCHED_METHODS = ("encode_supervised", "encode_turns", "encode_turns_many", "supervised_from_turns", "_encode",
                    "_response_ids", "check_supervised")


def batch_encodable(template, tokenizer) -> bool:
    """Whether a batch of conversations can be encoded with one tokenizer call instead of one per text
    piece and give the same ids: a fast (Rust) tokenizer, whose batch call encodes every text exactly
    as its single call does, and a template that encodes through :class:`Template`'s own pieces."""
    cls = type(template)
    return (bool(getattr(tokenizer, "is_fast", False)) and isinstance(template, Template)
            and all(getattr(cls, name) is getattr(Template, name) for name in _BATCHED_METHODS))


def _supervised_batched(examples: list[dict], template, tokenizer, settings: Settings, arrow: bool = False):
    """:func:`supervised_batch` for a whole batch at once: every row rendered to its text pieces, all
    pieces encoded in one tokenizer call, then each row truncated and labelled as
    :func:`encode_counted` does (uncut first; a row longer than cutoff_len is cut from the same pieces).
    ``arrow``: the columns as one Arrow table built from flat arrays (:func:`_segments_table`)."""
    template.check_supervised(settings.train_on_prompt)
    conversations = [(e["messages"], e.get("system") or settings.default_system, e.get("tools") or None) for e in examples]
    eos_id = tokenizer.eos_token_id
    rows: list[tuple[list, bool]] = []  # per kept row: its (ids, labels) pieces (labels True/False: the ids/ignored) and cut
    for turns in template.encode_turns_many(tokenizer, conversations, enable_thinking=settings.enable_thinking):
        segments = template.uncut_segments(turns, settings.train_on_prompt, settings.mask_history)
        if segments is not None and sum(len(ids) for ids, _ in segments) <= settings.cutoff_len:
            if any(trained and ids for ids, trained in segments):
                rows.append((segments, False))
            continue
        ids, labels = template.supervised_from_turns(turns, eos_id, NO_CUTOFF, settings.train_on_prompt, settings.mask_history)
        cut = len(ids) > settings.cutoff_len
        if cut:
            ids, labels = template.supervised_from_turns(turns, eos_id, settings.cutoff_len, settings.train_on_prompt,
                                                         settings.mask_history)
        if _trained(labels):
            rows.append(([(ids, labels)], cut))
    if arrow and rows:
        table = _segments_table(rows)
        if table is not None:
            return table
    out = {"input_ids": [], "attention_mask": [], "labels": [], TRUNCATED: []}
    for segments, cut in rows:
        ids, labels = [], []
        for piece, piece_labels in segments:
            ids += piece
            labels += piece if piece_labels is True else [IGNORE_INDEX] * len(piece) if piece_labels is False else piece_labels
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append(labels)
        out[TRUNCATED].append(cut)
    return out


def _segments_table(rows: list[tuple[list, bool]]):
    """The supervised columns of ``rows`` (see :func:`_supervised_batched`) as the Arrow table
    :func:`as_arrow` would build from their lists, without those lists: the ids of every piece in one
    flat array, the labels a copy of it with ignored pieces set to IGNORE_INDEX (and explicit labels
    written in), rows cut from it by their offsets. None when an id does not fit int32."""
    import numpy as np
    import pyarrow as pa

    pieces = [piece for segments, _ in rows for piece, _ in segments]
    modes = np.fromiter((0 if labels is True else 1 if labels is False else 2 for segments, _ in rows for _, labels in segments),
                        dtype=np.int8, count=len(pieces))
    lengths = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))
    row_lengths = np.fromiter((sum(len(piece) for piece, _ in segments) for segments, _ in rows), dtype=np.int64, count=len(rows))
    try:
        offsets, total = _offsets(row_lengths)
    except OverflowError:
        return None
    ids = np.fromiter(chain.from_iterable(pieces), dtype=np.int64, count=total)
    if total and (ids.max() > np.iinfo(np.int32).max or ids.min() < np.iinfo(np.int32).min):
        return None
    labels = ids.copy()
    per_token = np.repeat(modes, lengths)
    labels[per_token == 1] = IGNORE_INDEX
    if (modes == 2).any():
        labels[per_token == 2] = np.fromiter(chain.from_iterable(l for segments, _ in rows for _, l in segments
                                                                 if l is not True and l is not False), dtype=np.int64)
    return pa.table({
        "input_ids": pa.ListArray.from_arrays(offsets, pa.array(ids.astype(np.int32))),
        "attention_mask": pa.ListArray.from_arrays(offsets, pa.array(np.ones(total, dtype=np.int8))),
        "labels": pa.ListArray.from_arrays(offsets, pa.array(labels)),
        TRUNCATED: pa.array([cut for _, cut in rows], type=pa.bool_()),
    })


#: The Arrow type ``datasets`` infers for each of these columns from Python lists (its narrower
#: "optimized" ints for input_ids and attention_mask).
_ARROW_TYPES = {"input_ids": "int32", "attention_mask": "int8", "labels": "int64", TRUNCATED: None}


def _list_column(values: list[list[int]], arrow_type: str):
    """An Arrow list column of ``arrow_type`` ints from Python lists: one flat numpy buffer and its
    offsets (a few times faster than Arrow converting value by value). OverflowError when a value
    does not fit the type."""
    import numpy as np
    import pyarrow as pa

    offsets, total = _offsets(np.fromiter(map(len, values), dtype=np.int64, count=len(values)))
    if arrow_type == "int8" and all(row.count(1) == len(row) for row in values):  # an attention mask of ones
        flat = np.ones(total, dtype=np.int8)
    else:
        flat = np.fromiter(chain.from_iterable(values), dtype=getattr(np, arrow_type), count=total)
    return pa.ListArray.from_arrays(offsets, pa.array(flat))


def _offsets(lengths):
    """``(Arrow int32 offsets of rows with these lengths, their total)``; OverflowError past int32."""
    import numpy as np
    import pyarrow as pa

    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] > np.iinfo(np.int32).max:
        raise OverflowError("more values than an Arrow list column holds")
    return pa.array(offsets.astype(np.int32)), int(offsets[-1])


def as_arrow(featurize):
    """``featurize`` returning an Arrow table of the types ``datasets.map`` would infer from its lists:
    the same stored features, built by Arrow from flat buffers instead of value by value in Python.
    A batch with other columns, no rows, or values that do not fit those types (an id past int32)
    is returned as lists, for datasets to type as before."""
    import pyarrow as pa

    def wrapped(batch: dict) -> dict:
        out = featurize(batch)
        if isinstance(out, pa.Table):
            return out
        if not out or set(out) - set(_ARROW_TYPES) or not all(isinstance(v, list) and v for v in out.values()):
            return out
        try:
            return pa.table({column: pa.array(values, type=pa.bool_()) if _ARROW_TYPES[column] is None
                             else _list_column(values, _ARROW_TYPES[column])
                             for column, values in out.items()})
        except (pa.ArrowInvalid, OverflowError, TypeError, ValueError):
            return out

    return wrapped


def _media_whole(input_ids: list[int], example: dict, media_ids: dict[int, int], tokenizer) -> bool:
    """Whether ``input_ids`` hold every media token of the (expanded) example's prompt: a row cut
    inside an image cannot be fed to the model."""
    expected = sum(m["content"].count(t) for m in example["messages"]
                   for t in (tokenizer.convert_ids_to_tokens(i) for i in media_ids))
    return sum(1 for i in input_ids if i in media_ids) == expected


def _media_setup(out: dict, media, tokenizer) -> dict[int, int]:
    """Add the media file columns to ``out``; the media token ids (empty without a media handler)."""
    if media is None:
        return {}
    out.update({c: [] for c in media.modalities})
    return media.media_token_ids(tokenizer)


def _reported(out, report: bool):
    """``out`` (columns, or an Arrow table) without the TRUNCATED column unless ``report``."""
    if report:
        return out
    if not isinstance(out, dict):
        return out.drop_columns([TRUNCATED])
    out.pop(TRUNCATED, None)
    return out


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """LLaMA-Factory's split of ``cutoff_len`` between a prompt and a reply: a short reply (under half)
    is kept whole, else a short prompt is, else both are cut in proportion to their lengths."""
    if target_len * 2 < cutoff_len:
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target_len = cutoff_len - source_len
    else:
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    new_source_len = min(max(cutoff_len - new_target_len, 0), source_len)
    return new_source_len, new_target_len


def encode_pair(template, tokenizer, example: dict, settings: Settings) -> dict[str, tuple[list[int], list[int], bool]] | None:
    """Chosen and rejected sides cut as one pair, as LLaMA-Factory cuts them: one prompt budget from the
    longer reply (``infer_seqlen(prompt, max(chosen, rejected))``), so both sides keep the same prompt
    tokens, which DPO needs (it compares the two replies under one prompt). The prompt loses its start,
    as in sft (the assistant header stays before the reply); a reply loses its end. None when the
    template does not render the same prompt for both sides (the sides are then cut one by one).
    Each side comes with whether cutoff_len cut it."""
    if settings.train_on_prompt and getattr(template, "efficient_eos", False):
        return None  # the template refuses this combination itself, with its reason
    untruncated = replace(settings, train_on_prompt=False)
    full = {side: encode_conversation(template, tokenizer, _reply(example, side), untruncated, cutoff_len=NO_CUTOFF,
                                      mask_history=True) for side in ("chosen", "rejected")}
    starts = {side: next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)
              for side, (_, labels) in full.items()}
    if None in starts.values() or starts["chosen"] != starts["rejected"]:
        return None
    start = starts["chosen"]
    prompt = full["chosen"][0][:start]
    if full["rejected"][0][:start] != prompt:
        return None
    longest = max(len(ids) - start for ids, _ in full.values())
    source_len, target_len = infer_seqlen(len(prompt), longest, settings.cutoff_len)
    kept_prompt = prompt[len(prompt) - source_len:] if source_len else []
    prompt_labels = list(kept_prompt) if settings.train_on_prompt else [IGNORE_INDEX] * len(kept_prompt)
    out = {}
    for side, (ids, labels) in full.items():
        cut = len(kept_prompt) < len(prompt) or len(ids) - start > target_len
        out[side] = (kept_prompt + ids[start:start + target_len], prompt_labels + labels[start:start + target_len], cut)
    return out


def pairwise_batch(batch: dict, *, template, tokenizer, settings: Settings, media=None, model_path: str = "",
                   report: bool = False) -> dict:
    """``media``: as in :func:`supervised_batch`; both sides share the prompt, so its media (the row
    keeps one file list, which the collator feeds to the chosen and the rejected forward alike)."""
    out = {f"{side}_{name}": [] for side in ("chosen", "rejected") for name in ("input_ids", "attention_mask", "labels")}
    out[TRUNCATED] = []
    media_ids = _media_setup(out, media, tokenizer)
    for example in examples_of(batch):
        files = _media_of(example, media)
        example = expand_media(example, media, model_path, tokenizer)
        encoded = encode_pair(template, tokenizer, example, settings) or {
            side: encode_counted(template, tokenizer, _reply(example, side), settings, mask_history=True)
            for side in ("chosen", "rejected")}
        if media_ids:
            encoded = {side: (ids, mask_media_labels(ids, labels, media_ids), cut) for side, (ids, labels, cut) in encoded.items()}
            if not all(_media_whole(ids, example, media_ids, tokenizer) for ids, _, _ in encoded.values()):
                continue  # truncation cut into the prompt's media tokens
        if all(_trained(labels) for _, labels, _ in encoded.values()):
            for column in media.modalities if media is not None else ():
                out[column].append(files.get(column, []))
            for side, (input_ids, labels, _) in encoded.items():
                out[f"{side}_input_ids"].append(input_ids)
                out[f"{side}_attention_mask"].append([1] * len(input_ids))
                out[f"{side}_labels"].append(labels)
            out[TRUNCATED].append(any(cut for _, _, cut in encoded.values()))
    return _reported(out, report)


def kto_batch(batch: dict, *, template, tokenizer, settings: Settings, media=None, model_path: str = "",
              report: bool = False) -> dict:
    """``media``: as in :func:`supervised_batch`; a row's KL row keeps its prompt, so its media too."""
    examples = examples_of(batch)
    others = examples[::-1]
    names = ("input_ids", "attention_mask", "labels")
    out = {**{n: [] for n in names}, **{f"kl_{n}": [] for n in names}, "kto_tags": [], TRUNCATED: []}
    media_ids = _media_setup(out, media, tokenizer)
    for example, other in zip(examples, others):
        files = _media_of(example, media)
        example = expand_media(example, media, model_path, tokenizer)
        input_ids, labels, cut = encode_counted(template, tokenizer, example, settings, mask_history=True)
        kl_example = {**example, "messages": example["messages"][:-1] + other["messages"][-1:]}
        kl_ids, kl_labels = encode_conversation(template, tokenizer, kl_example, settings, mask_history=True)
        if media_ids:
            labels, kl_labels = mask_media_labels(input_ids, labels, media_ids), mask_media_labels(kl_ids, kl_labels, media_ids)
            if not (_media_whole(input_ids, example, media_ids, tokenizer) and _media_whole(kl_ids, kl_example, media_ids, tokenizer)):
                continue  # truncation cut into the prompt's media tokens
        if _trained(labels):
            for column in media.modalities if media is not None else ():
                out[column].append(files.get(column, []))
            for prefix, ids, labs in (("", input_ids, labels), ("kl_", kl_ids, kl_labels)):
                out[f"{prefix}input_ids"].append(ids)
                out[f"{prefix}attention_mask"].append([1] * len(ids))
                out[f"{prefix}labels"].append(labs)
            out["kto_tags"].append(bool(example["kto_tag"]))
            out[TRUNCATED].append(cut)
    return _reported(out, report)


def prompt_batch(batch: dict, *, template, tokenizer, settings: Settings, report: bool = False) -> dict:
    out = {"input_ids": [], "attention_mask": [], "reference_ids": []}
    for example in examples_of(batch):
        messages = example["messages"]
        reply = messages[-1]["content"] if messages[-1].get("role") == "assistant" else ""
        if reply:
            messages = messages[:-1]
        kwargs = template_kwargs(template, "encode_prompt", tools=example.get("tools") or None,
                                 enable_thinking=settings.enable_thinking)
        input_ids = template.encode_prompt(tokenizer, messages, example.get("system") or settings.default_system, **kwargs)
        if len(input_ids) <= settings.cutoff_len:
            out["input_ids"].append(input_ids)
            out["attention_mask"].append([1] * len(input_ids))
            out["reference_ids"].append(tokenizer(reply, add_special_tokens=False)["input_ids"] if reply else [])
    return out


def text_token_ids(texts: list[str], tokenizer) -> list[list[int]]:
    """Each text's ids followed by EOS (one batched tokenizer call)."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    eos = tokenizer.eos_token_id
    return [list(row) + ([eos] if eos is not None else []) for row in ids]


def text_batch(batch: dict, *, tokenizer, settings: Settings, report: bool = False) -> dict:
    texts = [example["text"] for example in examples_of(batch)]
    rows = text_token_ids(texts, tokenizer)
    size = settings.cutoff_len
    if settings.packing:  # chunked, not truncated: nothing is lost
        stream = [token for row in rows for token in row]
        blocks = [stream[i : i + size] for i in range(0, len(stream), size)]
        cut = [False] * len(blocks)
    else:
        blocks = [row[:size] for row in rows]
        cut = [len(row) > size for row in rows]
    out = {"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks], "labels": [list(b) for b in blocks],
           TRUNCATED: cut}
    return _reported(out, report)


BATCH_FUNCTIONS = {"supervised": supervised_batch, "pairwise": pairwise_batch, "kto": kto_batch, "prompt": prompt_batch}
