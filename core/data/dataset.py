"""Build what a stage trains on: examples -> features (ids, labels) -> train/eval splits + collator.

Stages call :func:`build_datasets` with the kind of rows they consume ("text", "supervised",
"pairwise", "kto"); everything about files, formats, templates, truncation, packing and caching
stays behind it. The order, as in LLaMA-Factory:

1. ``tokenized_path`` that exists: load it and skip everything else;
2. ``streaming``: an ``IterableDataset`` read, converted and tokenised lazily (needs max_steps);
3. otherwise the cache (cache.py) or: read and convert every dataset (bad rows reported together),
   mix them (``mix_strategy``: concat, interleave_under, interleave_over, interleave_once with ``interleave_probs``),
   tokenise with ``datasets.map(batched=True, num_proc=preprocessing_num_workers)``, pack, and save
   the result in the cache;
4. hold out ``val_size`` (a fraction, or a row count) when no eval_dataset is named;
5. ``tokenized_path`` that does not exist yet: save train/validation there.
"""

from __future__ import annotations

import gc
import inspect
import json
import logging
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ..errors import ConfigError, DataError
from ..specs import BUILTIN_DATA_KINDS
from ..ranks import is_local_main_process, is_main_process, world_size
from . import cache
from .collator import COLLATORS
from .loading import load_examples, skip_summary, stream_examples
from .packing import pack_batch
from .registry import data_problems, interleave_probabilities
from .template import IGNORE_INDEX
from .tokenize import BATCH_FUNCTIONS, TRUNCATED, Settings, as_arrow, text_batch

logger = logging.getLogger(__name__)


@dataclass
class DatasetSplits:
    train: Any
    eval: Any  # None when there is no evaluation data
    collator: Any


def _say(message: str) -> None:
    logger.info(message)
    if is_local_main_process():  # one report per node, not one per process
        print(message, flush=True)


def stage_data_kind(ctx, kind: str):
    """The :class:`~tuneforge.specs.DataKind` of a kind the core does not build: the run's stage's own."""
    spec = ctx.plan.stage.spec
    if kind not in BUILTIN_DATA_KINDS and spec.data_kind == kind and spec.data is not None:
        return spec.data
    if kind not in BUILTIN_DATA_KINDS:
        raise ValueError(f"data kind '{kind}' is not built by tuneforge and stage '{ctx.plan.stage.name}' does not "
                         "define it (StageSpec.data)")
    return None


def make_collator(ctx, kind: str):
    pad = ctx.tokenizer.pad_token_id
    label_pad = IGNORE_INDEX if ctx.config.ignore_pad_token_for_loss else pad
    custom = stage_data_kind(ctx, kind)
    if custom is not None:
        return custom.collator(pad, label_pad)
    collator = COLLATORS[kind](pad, label_pad_token_id=label_pad)
    media = getattr(ctx, "media", None)
    if media is not None:
        collator.media = (media, str(ctx.config.model_name_or_path), ctx.tokenizer)
    return collator


def featurizer(ctx, kind: str, settings: Settings, report: bool = False, arrow: bool = False):
    """The batched function mapping ``{"_example": [json, ...]}`` to feature columns for ``kind``;
    ``report=True`` adds the TRUNCATED column (the caller counts and removes it); ``arrow=True`` lets a
    built-in featurizer that can return an Arrow table do so (see tokenize.as_arrow)."""
    custom = stage_data_kind(ctx, kind)
    if custom is not None:
        return partial(custom.featurize, template=ctx.template, tokenizer=ctx.tokenizer, settings=settings)
    if kind == "text":
        return partial(text_batch, tokenizer=ctx.tokenizer, settings=settings, report=report)
    if kind not in BATCH_FUNCTIONS:
        raise ValueError(f"no featurizer for data kind '{kind}'")
    extra = {}
    media = getattr(ctx, "media", None)
    if media is not None and "media" in inspect.signature(BATCH_FUNCTIONS[kind]).parameters:  # rows keep their media
        extra = {"media": media, "model_path": str(ctx.config.model_name_or_path)}
    if arrow and "arrow" in inspect.signature(BATCH_FUNCTIONS[kind]).parameters:
        extra["arrow"] = True
    return partial(BATCH_FUNCTIONS[kind], template=ctx.template, tokenizer=ctx.tokenizer, settings=settings, report=report, **extra)


def _examples_dataset(examples: list[dict]):
    from datasets import Dataset

    return Dataset.from_dict({"_example": [json.dumps(e, ensure_ascii=False) for e in examples]})


#: mix_strategy -> datasets' stopping rule. interleave_once samples without replacement: every row of
#: every dataset is used exactly once (LLaMA-Factory's "sampling w.o. replacement").
_STOPPING = {"interleave_under": "first_exhausted", "interleave_over": "all_exhausted",
             "interleave_once": "all_exhausted_without_replacement"}


def _mix(parts: list, config, strategy: str | None = None):
    """One dataset from several: concatenated, or interleaved (under: stop at the first exhausted,
    over: oversample until all are exhausted), as LLaMA-Factory's merge_dataset does."""
    from datasets import concatenate_datasets, interleave_datasets

    strategy = strategy or config.mix_strategy
    if len(parts) == 1:
        return parts[0]
    if strategy == "concat":
        return concatenate_datasets(parts)
    return interleave_datasets(
        parts, probabilities=interleave_probabilities(config), seed=config.seed,
        stopping_strategy=_STOPPING[strategy],
    )


def _map_kwargs(config, rows: int | None, fingerprint: str) -> dict:
    kwargs: dict[str, Any] = {"batched": True, "batch_size": config.preprocessing_batch_size}
    if rows is None:  # IterableDataset: lazy, no workers, no progress bar
        return kwargs
    # Each worker gets at least one whole batch, and no more workers than cores: for small data,
    # starting processes costs more than it saves.
    batches = -(-rows // max(1, config.preprocessing_batch_size))
    workers = min(config.preprocessing_num_workers or 1, os.cpu_count() or 1, batches)
    if workers > 1:
        kwargs["num_proc"] = workers
    kwargs.update(load_from_cache_file=False, new_fingerprint=fingerprint)
    return kwargs


def _tokenise_here(featurize, examples: list[dict], batch_size: int, label: str, fingerprint: str | None = None):
    """What ``datasets.map(featurize, batched=True)`` gives for one process, without its round trip
    through a JSON column: the example dicts go to the featurizer as they are and the Arrow tables it
    returns are joined in order. (Two batches at a time on two threads, one encoding in Rust while the
    other runs Python, measured slower on two cores than this loop: the Rust batch call already uses
    every core.) None when a batch did not come back as an Arrow table (``as_arrow`` leaves values that
    do not fit its types to datasets' own typing): the caller maps with datasets instead, so the
    stored features are the same either way. ``fingerprint``: the new dataset's (datasets would
    otherwise hash the whole table to make one: a second per 50,000 rows)."""
    import pyarrow as pa
    from datasets import Dataset
    from datasets.table import InMemoryTable
    from datasets.utils import tqdm as hf_tqdm

    size = max(1, batch_size or 1000)
    tables = []
    # The examples (and all else loaded so far) are set aside from garbage collection meanwhile: the
    # collections that tokenising's many small lists trigger then scan only new objects (about 13% of
    # the time on 50,000 rows), and cycles made meanwhile are still collected.
    freeze = gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    try:
        with hf_tqdm(total=len(examples), desc=f"Tokenising {label}", unit=" examples") as bar:
            for start in range(0, len(examples), size):
                batch = examples[start : start + size]
                out = featurize({"_example": batch})
                bar.update(len(batch))
                if isinstance(out, pa.Table):
                    tables.append(out)
                elif any(out.values()):  # rows, but not as Arrow: let datasets type them
                    return None
    finally:
        if freeze:
            gc.unfreeze()
    if not tables:
        return None
    return Dataset(InMemoryTable(pa.concat_tables(tables)), fingerprint=fingerprint or uuid.uuid4().hex)


def _featurize(ctx, kind: str, settings: Settings, raw, label: str, fingerprint: str, notes: list[str] | None = None):
    """Tokenise (and pack) examples -- a list of example dicts, or a dataset of them JSON-encoded (the
    mixes only datasets can sample) -- and report rows cutoff_len truncates and rows that lose every
    trained token (printed, and added to ``notes`` so a run from the cache repeats them)."""
    config = ctx.config
    builtin = stage_data_kind(ctx, kind) is None
    featurize = featurizer(ctx, kind, settings, report=True, arrow=builtin)
    if builtin:  # the built-in featurizers' int columns: handed over as Arrow
        featurize = as_arrow(featurize)
    rows = len(raw)
    map_kwargs = _map_kwargs(config, rows, f"{fingerprint[:24]}-{label.split()[0]}-tokens")
    features = None
    if isinstance(raw, list):
        if builtin and "num_proc" not in map_kwargs:
            features = _tokenise_here(featurize, raw, config.preprocessing_batch_size, label,
                                      map_kwargs.get("new_fingerprint"))
        if features is None:
            raw = _examples_dataset(raw)
    if features is None:
        features = raw.map(featurize, remove_columns=["_example"], desc=f"Tokenising {label}", **map_kwargs)
    if TRUNCATED in features.column_names:
        truncated = features.data.column(TRUNCATED).to_pylist().count(True)  # Arrow, not row by row
        features = features.remove_columns([TRUNCATED])
        if truncated:
            note = (f"{label}: {truncated} of {len(features)} row(s) truncated to cutoff_len={settings.cutoff_len} "
                    "(`tuneforge data CONFIG` shows the token lengths; raise cutoff_len to keep them whole)")
            _say(note)
            if notes is not None:
                notes.append(note)
    if kind != "text":
        dropped = rows - len(features)
        why = "the prompt is longer than" if kind == "prompt" else "no response token is left within"
        if dropped:
            _say(f"{label}: {dropped} of {rows} row(s) dropped: {why} cutoff_len={settings.cutoff_len}; raise cutoff_len to keep them")
        if not len(features):
            lost = "every prompt is longer than" if kind == "prompt" else "no row has a response token within"
            raise DataError(f"{label}: {lost} cutoff_len={settings.cutoff_len}; raise cutoff_len "
                            f"(`tuneforge data CONFIG` shows the token lengths)")
    if settings.packing and kind == "supervised":
        before = len(features)
        features = features.map(partial(pack_batch, cutoff_len=settings.cutoff_len, neat=settings.neat_packing),
                                desc=f"Packing {label}", **_map_kwargs(config, before, f"{fingerprint[:24]}-{label.split()[0]}-packed"))
        _say(f"{label}: packed {before} samples into {len(features)} rows of at most {settings.cutoff_len} tokens"
             + (" (neat: no attention across samples)" if settings.neat_packing else ""))
    return features


def preprocess(ctx, kind: str, settings: Settings, fingerprint: str = "") -> tuple[Any, list[str]]:
    """``(DatasetDict with "train" and maybe "eval", notes)`` from the files, without any cache."""
    from datasets import DatasetDict

    fingerprint = fingerprint or uuid.uuid4().hex
    notes: list[str] = []
    out = {}
    for split, plans in (("train", ctx.plan.datasets), ("eval", ctx.plan.eval_datasets)):
        if not plans:
            continue
        results = load_examples(ctx, plans, kind)
        notes += [skip_summary(r) for r in results if r.bad]
        parts = [r.examples for r in results]
        if split == "eval" and len(parts) > 1:
            # Each evaluation dataset on its own as well (eval_{i}), for eval_on_each_dataset; "eval" is
            # their concatenation. Built whatever that key says, so the cached entry serves both.
            from datasets import concatenate_datasets

            each = [_featurize(ctx, kind, settings, part, f"evaluation data ({plan.attr.name})", f"{fingerprint}-{i}")
                    for i, (part, plan) in enumerate(zip(parts, plans))]
            out.update({f"eval_{i}": features for i, features in enumerate(each)})
            out[split] = concatenate_datasets(each)
            continue
        strategy = ctx.config.mix_strategy if split == "train" else "concat"
        if len(parts) == 1 or strategy == "concat":  # in order: the lists themselves
            raw = [example for part in parts for example in part]
        else:
            raw = _mix([_examples_dataset(part) for part in parts], ctx.config, strategy=strategy)
        out[split] = _featurize(ctx, kind, settings, raw, "training data" if split == "train" else "evaluation data",
                                fingerprint, notes)
    if "train" not in out:
        raise DataError("no training dataset: set dataset: (names from dataset_info.json, or a data file)")
    return DatasetDict(out), notes


@contextmanager
def _main_process_first(config):
    """The builder (see :func:`_features_once`) goes first while the others wait in a barrier; for the
    cases with no cache entry to watch. The barrier waits ``ddp_timeout`` seconds, as training does."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    # cpu=True on a machine without GPUs: accelerate then joins the gloo process group torchrun set up
    # (without it, it sees no device and reports a single process, and every rank would preprocess).
    accelerated = torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())
    state = PartialState(cpu=not accelerated, timeout=timedelta(seconds=int(config.get("ddp_timeout") or 1800)))
    with state.main_process_first() if config.data_shared_file_system else state.local_main_process_first():
        yield


def _is_builder(config) -> bool:
    """The process that preprocesses: the first of each node, or the first of all when the nodes share
    the cache folder (data_shared_file_system)."""
    return is_main_process() if config.data_shared_file_system else is_local_main_process()


def _features_once(ctx, kind: str, settings: Settings):
    """Under torchrun, one process per node builds the cache entry and the others read it.

    The others wait by watching for the entry on disk (it appears whole: cache.save renames a finished
    folder into place), not in a collective, so preprocessing a large dataset never times them out.
    Without an entry to watch (hub data) or with ``overwrite_cache`` (the old entry is still there), a
    barrier with the run's ``ddp_timeout`` orders them instead.
    """
    config = ctx.config
    if world_size() <= 1:
        return cached_features(ctx, kind, settings)
    key, _ = cache.cache_key(ctx, kind, settings)
    if key is None or config.overwrite_cache:
        with _main_process_first(config):
            return cached_features(ctx, kind, settings)
    if not _is_builder(config):
        path = cache.entry_path(key)
        waited = 0.0
        while cache.load(path) is None:
            time.sleep(1.0)
            waited += 1.0
            if waited % 300 == 0:
                logger.info("waiting for the main process to preprocess the data (%d s so far)", waited)
    return cached_features(ctx, kind, settings)


def cached_features(ctx, kind: str, settings: Settings):
    """The features from the cache when an entry matches, else built and stored."""
    config = ctx.config
    key, parts = cache.cache_key(ctx, kind, settings)
    path = cache.entry_path(key) if key else None
    # overwrite_cache rebuilds once: under torchrun the other ranks wait for it and read the new entry.
    rebuild = config.overwrite_cache and is_local_main_process()
    if path is not None and not rebuild:
        found = cache.load(path)
        if found is not None:
            features, meta = found
            _say(f"loaded tokenised dataset from cache {path}")
            for note in meta.get("notes", []):
                _say(f"{note} [when the cache was built]")
            return features
    features, notes = preprocess(ctx, kind, settings, fingerprint=key or "")
    if path is None:
        _say("tokenised data is not cached: hub datasets cannot be hashed before download")
        return features
    cache.save(path, features, {"key": key, "inputs": parts, "notes": notes, "rows": {k: len(v) for k, v in features.items()}})
    _say(f"saved tokenised dataset to cache {path} " + ("(overwrite_cache: true rebuilds it on every run; set it to false "
         "to reuse it)" if config.overwrite_cache else "(set overwrite_cache: true to rebuild)"))
    return features


def _split(train, val_size, seed: int):
    count = int(val_size) if val_size >= 1 else val_size
    if isinstance(count, int) and count >= len(train):
        raise DataError(f"val_size={val_size} holds out every one of the {len(train)} training rows")
    split = train.train_test_split(test_size=count, seed=seed)
    return split["train"], split["test"]


def _load_tokenized(path: str):
    from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk

    data = load_from_disk(path)
    if isinstance(data, Dataset):
        return data, None
    if not isinstance(data, DatasetDict) or "train" not in data:
        raise DataError(f"tokenized_path {path} holds no 'train' split (it should be a saved DatasetDict)")
    evals = [data[k] for k in sorted(data) if k == "validation" or k == "eval" or k.startswith("validation_")]
    return data["train"], (concatenate_datasets(evals) if len(evals) > 1 else evals[0] if evals else None)


def _streaming_source(token: str, kind: str, index: int, split: str):
    ctx = _STREAMS[token]
    plans = ctx.plan.datasets if split == "train" else ctx.plan.eval_datasets
    for example in stream_examples(ctx, plans[index], kind):
        yield {"_example": json.dumps(example, ensure_ascii=False)}


#: Run contexts of the streams in flight: the generator `datasets` calls takes a token, not the
#: context, so nothing heavy is hashed or pickled. Kept for the life of the process: the stream may
#: be iterated again (every epoch, every evaluation) as long as its dataset exists.
_STREAMS: dict[str, Any] = {}


def _streaming(ctx, kind: str, settings: Settings) -> tuple[Any, Any]:
    from datasets import IterableDataset

    config = ctx.config
    token = uuid.uuid4().hex
    _STREAMS[token] = ctx
    out = {}
    for split, plans in (("train", ctx.plan.datasets), ("eval", ctx.plan.eval_datasets)):
        if not plans:
            continue
        parts = [IterableDataset.from_generator(_streaming_source, gen_kwargs={"token": token, "kind": kind, "index": i, "split": split})
                 for i in range(len(plans))]
        raw = _mix(parts, config, strategy=None if split == "train" else "concat")
        features = raw.map(featurizer(ctx, kind, settings), remove_columns=["_example"], **_map_kwargs(config, None, ""))
        if settings.packing and kind == "supervised":
            features = features.map(partial(pack_batch, cutoff_len=settings.cutoff_len, neat=settings.neat_packing),
                                    **_map_kwargs(config, None, ""))
        out[split] = features
    train, evaluation = out["train"], out.get("eval")
    if evaluation is None and config.val_size:
        train = train.shuffle(buffer_size=config.buffer_size, seed=config.seed)
        evaluation, train = train.take(int(config.val_size)), train.skip(int(config.val_size))
    _say("streaming the training data: rows are read, converted and tokenised as training consumes them")
    return train, evaluation


def build_datasets(ctx, kind: str) -> DatasetSplits:
    """Train and eval features for ``kind``, with val_size held out, and the collator for them."""
    config = ctx.config
    problems = data_problems(config, kind)
    if problems:
        raise ConfigError(problems)
    settings = Settings.from_config(config, kind)
    collator = make_collator(ctx, kind)
    tokenized = config.tokenized_path
    if tokenized and Path(tokenized).is_dir() and any(Path(tokenized).iterdir()):
        train, evaluation = _load_tokenized(tokenized)
        _say(f"loaded tokenised dataset from {tokenized} (tokenized_path: the dataset, template and cutoff settings are not re-applied)")
        return DatasetSplits(train, evaluation, collator)
    if config.streaming:
        train, evaluation = _streaming(ctx, kind, settings)
        return DatasetSplits(train, evaluation, collator)

    features = _features_once(ctx, kind, settings)
    train, evaluation = features["train"], features["eval"] if "eval" in features else None
    if evaluation is None and config.val_size:
        train, evaluation = _split(train, config.val_size, config.seed)
    if tokenized and _is_builder(config):
        from datasets import DatasetDict

        DatasetDict({"train": train, **({"validation": evaluation} if evaluation is not None else {})}).save_to_disk(tokenized)
        _say(f"saved tokenised dataset to {tokenized}; runs with tokenized_path: {tokenized} load it and skip preprocessing")
    _say(f"training rows: {len(train)}" + (f", evaluation rows: {len(evaluation)}" if evaluation is not None else ""))
    if config.eval_on_each_dataset:
        evaluation = _each_eval_dataset(ctx, features, evaluation)
    return DatasetSplits(train, evaluation, collator)


def _each_eval_dataset(ctx, features, evaluation):
    """eval_on_each_dataset: {name: features} so the trainer reports eval_<name>_loss for each eval_dataset."""
    plans = ctx.plan.eval_datasets
    if len(plans) < 2 or "eval_0" not in features:
        _say("eval_on_each_dataset: only one evaluation dataset (eval_dataset names one, or val_size holds out "
             "rows of the training data): evaluating it as a whole")
        return evaluation
    out = {}
    for i, plan in enumerate(plans):
        name = plan.attr.name if plan.attr.name not in out else f"{plan.attr.name}_{i}"
        out[name] = features[f"eval_{i}"]
    _say("evaluating each dataset on its own: " + ", ".join(f"{n} ({len(d)} rows)" for n, d in out.items()))
    return out
