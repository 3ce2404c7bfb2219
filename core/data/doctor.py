"""The data doctor behind `tuneforge data CONFIG`: check the data before any training.

It validates every row of every dataset (not only the max_samples used), prints the row counts per
dataset, token-length statistics of the rows training would use (min / median / p95 / max of the
untruncated length, how many rows cutoff_len truncates and how many it empties), what packing would
make of them, whether the tokenised cache already holds them, and one rendered example with the
trained (label) tokens marked: ``[[like this]]``, or green on a terminal. Only the tokenizer is loaded.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from .loading import Converted, bad_rows_message, convert_dataset
from .packing import greedy_knapsack
from .template import IGNORE_INDEX
from .tokenize import NO_CUTOFF, Settings, batch_encodable, encode_conversation, expand_media, text_token_ids

GREEN, RESET = "\x1b[1;32m", "\x1b[0m"


def lengths_batch(batch: dict, *, template, tokenizer, settings: Settings, kind: str) -> dict:
    """Per example: untruncated length, length within cutoff_len, trained tokens within cutoff_len."""
    examples = [json.loads(text) for text in batch["_example"]]
    out = {"full": [], "kept": [], "trained": [], "rewritten": []}
    rewritten = getattr(template, "history_rewritten", None)
    if kind == "text":
        for ids in text_token_ids([e["text"] for e in examples], tokenizer):
            out["full"].append(len(ids))
            out["kept"].append(min(len(ids), settings.cutoff_len))
            out["trained"].append(min(len(ids), settings.cutoff_len))
            out["rewritten"].append(False)
        return out
    batched = kind == "supervised" and batch_encodable(template, tokenizer)
    if batched:  # every row's pieces in one tokenizer call, as training encodes them
        template.check_supervised(settings.train_on_prompt)
        conversations = [(e["messages"], e.get("system") or settings.default_system, e.get("tools") or None)
                         for e in examples]
        encoded = template.encode_turns_many(tokenizer, conversations, enable_thinking=settings.enable_thinking)
    for position, example in enumerate(examples):
        if batched:
            turns, eos_id = encoded[position], tokenizer.eos_token_id
            full_ids, _ = template.supervised_from_turns(turns, eos_id, NO_CUTOFF, settings.train_on_prompt, settings.mask_history)
            ids, labels = template.supervised_from_turns(turns, eos_id, settings.cutoff_len, settings.train_on_prompt,
                                                         settings.mask_history)
            out["full"].append(len(full_ids))
            out["kept"].append(len(ids))
            out["trained"].append(len(labels) - labels.count(IGNORE_INDEX))
            out["rewritten"].append(_rewritten(rewritten, tokenizer, example, settings, kind))
            continue
        variants = [example]
        if kind == "pairwise":
            variants = [{**example, "messages": example["messages"] + [{"role": "assistant", "content": example[side]}]}
                        for side in ("chosen", "rejected")]
        mask = True if kind in ("pairwise", "kto") else None
        full, kept, trained = [], [], []
        for variant in variants:
            full_ids, _ = encode_conversation(template, tokenizer, variant, settings, cutoff_len=NO_CUTOFF, mask_history=mask)
            ids, labels = encode_conversation(template, tokenizer, variant, settings, mask_history=mask)
            full.append(len(full_ids))
            kept.append(len(ids))
            trained.append(sum(label != IGNORE_INDEX for label in labels))
        out["full"].append(max(full))
        out["kept"].append(max(kept))
        out["trained"].append(min(trained))
        out["rewritten"].append(_rewritten(rewritten, tokenizer, example, settings, kind))
    return out


def _rewritten(rewritten, tokenizer, example: dict, settings: Settings, kind: str) -> bool:
    """The tokenizer's own template (template: auto) rewrites earlier turns: only the last reply trains."""
    return bool(rewritten) and kind == "supervised" and not settings.mask_history and rewritten(
        tokenizer, example["messages"], example.get("system") or settings.default_system,
        example.get("tools") or None, enable_thinking=settings.enable_thinking)


def render_marked(tokenizer, ids: list[int], labels: list[int], color: bool) -> str:
    """The decoded ids with every run of trained tokens wrapped in [[...]] (or coloured)."""
    pieces, run, trained = [], [], None
    for token, label in zip(ids, labels):
        is_trained = label != IGNORE_INDEX
        if trained is not None and is_trained != trained:
            pieces.append((trained, run))
            run = []
        run.append(token)
        trained = is_trained
    if run:
        pieces.append((trained, run))
    text = []
    for is_trained, tokens in pieces:
        decoded = tokenizer.decode(tokens, skip_special_tokens=False)
        text.append((f"{GREEN}{decoded}{RESET}" if color else f"[[{decoded}]]") if is_trained else decoded)
    return "".join(text)


def _percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)

    def __call__(self, line: str = "") -> None:
        self.lines.append(line)
        print(line, flush=True)


def run_doctor(ctx, kind: str, *, color: bool = False) -> int:
    """Print the report; 0 when training would start, 2 when bad rows would stop it (as `train` exits)."""
    from .cache import cache_key, entry_path
    from .dataset import _examples_dataset, _map_kwargs
    from .registry import data_problems

    config = ctx.config
    say = Report()
    problems = data_problems(config, kind)
    if problems:
        from ..errors import ConfigError

        raise ConfigError(problems)
    settings = Settings.from_config(config, kind)
    template_name = getattr(ctx.template, "name", "?") if kind != "text" else "(none: pre-training text)"
    say(f"data check for stage '{ctx.plan.stage.name}' ({kind} rows), template {template_name}, cutoff_len {settings.cutoff_len}")
    if kind != "text" and getattr(ctx.template, "how", None):
        say(f"template {template_name}: {ctx.template.how}")

    groups: list[tuple[str, list[Converted]]] = []
    for label, plans in (("dataset", ctx.plan.datasets), ("eval_dataset", ctx.plan.eval_datasets)):
        results = [convert_dataset(ctx, plan, kind, every_row=True) for plan in plans]
        for r in results:
            used = f", {len(r.examples)} used (num_samples/max_samples)" if len(r.examples) != r.total - len(r.bad) else ""
            state = f"{len(r.bad)} bad" if r.bad else "all valid"
            say(f"{label} '{r.attr.name}' ({r.attr.path}, {r.attr.formatting}): {r.total} rows, {state}{used}")
            _say_media(say, r)
        groups.append((label, results))
    all_results = [r for _, results in groups for r in results]
    media = getattr(ctx, "media", None)
    if media is not None:  # measure and render what the model sees: placeholders as media tokens
        model_path = str(config.model_name_or_path)
        for result in all_results:
            result.examples = [expand_media(e, media, model_path, ctx.tokenizer) for e in result.examples]
    bad = sum(len(r.bad) for r in all_results)
    if bad:
        say(bad_rows_message(all_results))

    say()
    unit = "texts" if kind == "text" else "rows"
    say(f"token lengths of the {unit} training uses (untruncated; cutoff_len={settings.cutoff_len}):")
    fn = partial(lengths_batch, template=ctx.template, tokenizer=ctx.tokenizer, settings=settings, kind=kind)
    key, _ = cache_key(ctx, kind, settings)
    stored = _stored_lengths(key, config)
    measured: dict[str, dict] = {}
    kept_all: list[int] = []
    for index, result in enumerate(all_results):
        if not result.examples:
            continue
        stats = stored.get(str(index))
        if stats is None or len(stats["full"]) != len(result.examples):
            raw = _examples_dataset(result.examples)
            stats = raw.map(fn, remove_columns=["_example"], desc=f"Measuring {result.attr.name}",
                            **_map_kwargs(config, len(raw), f"doctor-{len(raw)}")).to_dict()
        measured[str(index)] = stats
        full, kept, trained = stats["full"], stats["kept"], stats["trained"]
        truncated = sum(1 for n in full if n > settings.cutoff_len)
        emptied = sum(1 for n in trained if n == 0)
        say(f"  {result.attr.name}: {len(full)} {unit}  min {min(full)}  median {int(statistics.median(full))}  "
            f"p95 {_percentile(full, 0.95)}  max {max(full)}")
        say(f"    truncated by cutoff_len: {truncated} ({100 * truncated / len(full):.1f}%)"
            + (f"; left with no trained token (dropped): {emptied}" if kind != "text" else "")
            + (f"; trained tokens {sum(trained):,} of {sum(kept):,}" if kind != "text" else ""))
        if kind == "text":
            total = sum(full)
            say(f"    {total:,} tokens -> about {max(1, -(-total // settings.cutoff_len)) if settings.packing else len(full)} "
                f"training rows of up to {settings.cutoff_len} tokens" + (" (concatenated and chunked)" if settings.packing else ""))
        rewritten = sum(stats["rewritten"])
        if rewritten:
            say(f"    {rewritten} row(s): the chat template renders earlier turns differently once the conversation goes on "
                "(e.g. it drops past reasoning), so turn-by-turn rendering is not a prefix of the whole; "
                "these rows train only their last reply, in the context the model sees at inference")
        kept_all += [k for k, t in zip(kept, trained) if t]
    if settings.packing and kind == "supervised" and kept_all:
        size = max(1, config.preprocessing_batch_size)
        rows = sum(len(greedy_knapsack(kept_all[i : i + size], settings.cutoff_len)) for i in range(0, len(kept_all), size))
        say(f"  packing: {len(kept_all)} samples -> {rows} rows" + (" (neat: no attention across samples)" if settings.neat_packing else ""))

    if measured != stored:
        _store_lengths(key, measured)
    tokenized = config.tokenized_path
    if tokenized and Path(tokenized).is_dir() and any(Path(tokenized).iterdir()):
        say(f"  cache: not used: training loads tokenized_path {tokenized} as it is (the rows above are not what it trains on "
            "if the data, template or cutoff changed since it was saved)")
    elif key is None:
        say("  cache: not used (hub datasets)")
    else:
        path = entry_path(key)
        if config.overwrite_cache:
            state = "present, but overwrite_cache: true: training will rebuild it" if path.is_dir() else \
                "absent: training will build it"
        else:
            state = "present: training will load it" if path.is_dir() else "absent: training will build it"
        say(f"  cache: {path} ({state})" + (f"; training then saves it to tokenized_path {tokenized}" if tokenized else ""))

    first = next((r for r in all_results if r.examples), None)
    if first is not None:
        say()
        marker = "in green" if color else "[[like this]]"
        say(f"example (first row of '{first.attr.name}'), trained tokens shown {marker}:")
        _render_example(say, ctx, kind, settings, first.examples[0], color)
    say()
    if bad and not config.skip_bad_rows:
        say(f"result: {bad} bad row(s): training would stop; fix them, or set skip_bad_rows: true to skip them")
        print(f"error: {bad} bad row(s) (listed above); fix them, or set skip_bad_rows: true to skip them", file=sys.stderr)
        return 2
    empty = [r for r in all_results if not r.examples]
    if empty:
        names = ", ".join(f"'{r.attr.name}'" for r in empty)
        say(f"result: no usable row in {names}: training would stop")
        print(f"error: every row of {names} is bad (or unused); fix them", file=sys.stderr)
        return 2
    say(f"result: OK ({sum(len(r.examples) for r in all_results)} rows ready" + (f", {bad} bad row(s) skipped" if bad else "") + ")")
    return 0


def _lengths_path(key: str | None):
    """Where the doctor keeps the token lengths it measured for the cache key ``key`` (beside the
    tokenised entry of the same key; the doctor's own source is part of the name)."""
    if key is None:
        return None
    from .cache import _source_digest, entry_path

    path = entry_path(key)
    return path.parent / f"{path.name}.lengths-{(_source_digest(sys.modules[__name__]) or 'x')[:12]}.json"


def _stored_lengths(key: str | None, config) -> dict:
    """The per-dataset lengths a previous `tuneforge data` measured with the same data, tokenizer,
    template and settings (the tokenised cache's key), so a second call tokenises nothing; {} when
    there are none, when they cannot be read, or with ``overwrite_cache: true``."""
    path = _lengths_path(key)
    if path is None or config.overwrite_cache or not path.is_file():
        return {}
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stored if isinstance(stored, dict) else {}


def _store_lengths(key: str | None, measured: dict) -> None:
    path = _lengths_path(key)
    if path is None:
        return
    import os

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(measured), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: the next call measures again


def _render_example(say, ctx, kind: str, settings: Settings, example: dict, color: bool) -> None:
    tokenizer = ctx.tokenizer
    if kind == "text":
        ids = text_token_ids([example["text"]], tokenizer)[0][: settings.cutoff_len]
        say(render_marked(tokenizer, ids, ids, color))
        return
    if kind == "pairwise":
        for side in ("chosen", "rejected"):
            variant = {**example, "messages": example["messages"] + [{"role": "assistant", "content": example[side]}]}
            ids, labels = encode_conversation(ctx.template, tokenizer, variant, settings, mask_history=True)
            say(f"--- {side}:")
            say(_fold_media(render_marked(tokenizer, ids, labels, color), ctx, tokenizer))
        return
    ids, labels = encode_conversation(ctx.template, tokenizer, example, settings, mask_history=True if kind == "kto" else None)
    if kind == "kto":
        say(f"--- kto_tag: {'desirable' if example['kto_tag'] else 'undesirable'}")
    say(_fold_media(render_marked(tokenizer, ids, labels, color), ctx, tokenizer))
    say(f"--- {len(ids)} tokens, {sum(l != IGNORE_INDEX for l in labels)} trained")


#: Rows whose media are listed one by one (the rest are counted).
MEDIA_ROWS_SHOWN = 10


def _say_media(say, result) -> None:
    """The media of each row (files relative to where they were found), for datasets that have any."""
    from pathlib import Path

    from .media import MEDIA_COLUMNS

    columns = [c for c in MEDIA_COLUMNS if any(e.get(c) for e in result.examples)]
    if not columns:
        return
    totals = ", ".join(f"{sum(len(e.get(c) or []) for e in result.examples)} {c}" for c in columns)
    say(f"  media: {totals} in {len(result.examples)} rows")
    for index, example in enumerate(result.examples[:MEDIA_ROWS_SHOWN]):
        parts = [f"{c} " + ", ".join(Path(p).name for p in example.get(c) or []) for c in columns if example.get(c)]
        say(f"    row {index + 1}: " + ("; ".join(parts) if parts else "(none)"))
    if len(result.examples) > MEDIA_ROWS_SHOWN:
        say(f"    ... and {len(result.examples) - MEDIA_ROWS_SHOWN} more rows")


def _fold_media(text: str, ctx, tokenizer) -> str:
    """A run of N media tokens shown as ``<|image_pad|>*N``: the count is what matters, not the wall."""
    import re

    media = getattr(ctx, "media", None)
    if media is None:
        return text
    for token in media.media_token_ids(tokenizer):
        word = tokenizer.convert_ids_to_tokens(token)
        text = re.sub(f"(?:{re.escape(word)}){{2,}}", lambda run, w=word: f"{w}*{run.group(0).count(w)}", text)
    return text
