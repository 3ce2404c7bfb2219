"""The tokenised-dataset cache: a second run (or a run after a crash) skips preprocessing.

The key is a hash of everything the features depend on:

- the bytes of every data file, and each dataset's registry entry (format, columns, tags, ranking,
  num_samples, ...), the format plugin's source and the data kind of the stage;
- the chat template's definition and the renderer's source;
- the tokenizer: its files (tokenizer.json, tokenizer_config.json, ...; or its serialised state when
  it has no local folder), special tokens and chat template, and the transformers/tokenizers versions;
- the settings: cutoff_len, train_on_prompt, mask_history, enable_thinking, default_system, packing,
  neat_packing, max_samples, mix_strategy, interleave_probs, replace_placeholders, skip_bad_rows,
  preprocessing_batch_size/num_workers (batch boundaries decide packing) and the seed;
- the source of the data modules themselves, so a changed tokeniser never serves stale rows.

Entries live in ``$TUNEFORGE_CACHE/datasets/<key>`` (default ``~/.cache/tuneforge``) as a
``datasets.DatasetDict`` saved with ``save_to_disk`` (memory-mapped on load) plus ``tuneforge_cache.json``
describing the key. Writing goes to a temporary folder renamed into place, so a crash never leaves a
half-written entry. ``overwrite_cache: true`` rebuilds. Hub datasets are not cached here (their
contents cannot be hashed before download); `datasets` caches their download.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
import os
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

CACHE_ENV = "TUNEFORGE_CACHE"
#: Bump when the layout of cached entries changes.
CACHE_VERSION = "1"
META_FILE = "tuneforge_cache.json"
_TOKENIZER_FILES = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "chat_template.jinja",
    "chat_template.json", "qwen.tiktoken", "tokenizer.tiktoken",
}
_DATA_MODULES = ("example", "loading", "tokenize", "batch_encode", "packing", "dataset", "media")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tuneforge")


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _source_digest(obj: Any) -> str | None:
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:
        return None
    return file_digest(path) if path and Path(path).is_file() else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def tokenizer_fingerprint(tokenizer) -> dict:
    info: dict[str, Any] = {
        "class": type(tokenizer).__name__,
        "size": len(tokenizer),
        "special": {name: getattr(tokenizer, name, None) for name in ("bos_token", "eos_token", "pad_token", "unk_token")},
        "chat_template": getattr(tokenizer, "chat_template", None),
        "versions": {p: _version(p) for p in ("transformers", "tokenizers")},
    }
    folder = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    files = sorted(p for p in folder.iterdir() if p.name in _TOKENIZER_FILES) if folder.is_dir() else []
    if files:
        info["files"] = {p.name: file_digest(p) for p in files}
    else:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        state = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
        info["state"] = hashlib.sha256(state.encode("utf-8")).hexdigest()
    return info


def template_fingerprint(template) -> dict:
    if dataclasses.is_dataclass(template):
        definition = dataclasses.asdict(template)
    else:
        definition = getattr(template, "definition", None) or repr(template)
    return {"definition": definition, "renderer": _source_digest(type(template))}


def dataset_fingerprint(plan, manager) -> dict | None:
    """What decides one dataset's rows; None when its contents cannot be hashed (hub datasets)."""
    from .loading import data_files

    attr = plan.attr
    if attr.source != "file":
        return None
    files = data_files(attr)
    entry = attr.describe()
    for name in ("path", "data_kind", "formatting"):  # the kind is keyed apart; the loader fills formatting in
        entry.pop(name)
    if plan.format is not None:
        formats = [(plan.format.name, plan.format.provider, _source_digest(plan.format.spec.convert))]
    else:  # detected from the file at load time: any format plugin may answer
        formats = sorted((e.name, e.provider, _source_digest(e.spec.convert)) for e in manager.entries("format"))
    return {"entry": entry, "files": [(p.name, file_digest(p)) for p in files], "formats": formats}


def _handler_modules(media) -> list[str]:
    """The modules whose code decides a media handler's output: those of its classes, and the modules
    of the same package they take functions and classes from (a handler built from shared helpers)."""
    own = [c.__module__ for c in type(media).__mro__ if c.__module__ not in ("builtins", __package__ + ".media")]
    found = dict.fromkeys(own)
    for name in own:
        package = name.rpartition(".")[0]
        for value in vars(sys.modules[name]).values():
            module = getattr(value, "__module__", None)
            if (inspect.isfunction(value) or inspect.isclass(value)) and module and module.rpartition(".")[0] == package:
                found.setdefault(module)
    return sorted(found)


def media_fingerprint(ctx) -> dict | None:
    """What decides the media part of the features: the handler (and its code), the model's image
    processor settings (preprocessor_config.json), and every media file the datasets name: where it
    is (the features keep absolute paths) and its size and mtime (the pixels are read at batch time)."""
    media = getattr(ctx, "media", None)
    if media is None:
        return None
    from .loading import read_rows
    from .media import media_columns

    folder = Path(str(ctx.config.model_name_or_path))
    processor = folder / "preprocessor_config.json"
    # the handler's code and that of the modules it builds on (a subclass in another module)
    source = "".join(inspect.getsource(sys.modules[m]) for m in _handler_modules(media))
    files = hashlib.sha256()
    for plan in list(ctx.plan.datasets) + list(ctx.plan.eval_datasets):
        columns = [plan.attr.column(c) for c in media_columns(plan.attr)]
        if not columns or plan.attr.source != "file":
            continue
        base = Path(ctx.config.get("media_dir") or ctx.config.dataset_dir)
        for row in read_rows(plan.attr, ctx.config).rows:
            for column in columns:
                value = row.get(column) if isinstance(row, dict) else None
                for name in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
                    path = (base / str(name)).resolve()
                    try:
                        stat = path.stat()
                        files.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
                    except OSError:
                        files.update(f"{path}|missing\n".encode())
    return {
        "handler": f"{type(media).__module__}.{type(media).__qualname__}",
        "code": hashlib.sha256(source.encode("utf-8")).hexdigest()[:16],
        "processor": hashlib.sha256(processor.read_bytes()).hexdigest()[:16] if processor.is_file() else str(folder),
        # the processor's own settings (image_seq_length...) and the template's placeholders (media: processor)
        "processor_config": (hashlib.sha256((folder / "processor_config.json").read_bytes()).hexdigest()[:16]
                             if (folder / "processor_config.json").is_file() else None),
        "placeholders": getattr(media, "placeholders", None),
        "files": files.hexdigest()[:32],
        "settings": media.describe() if hasattr(media, "describe") else {},
        "options": dict(sorted((getattr(media, "options", None) or {}).items())),
    }


def cache_key(ctx, kind: str, settings) -> tuple[str | None, dict]:
    """``(key, what went into it)``; the key is None when some dataset cannot be cached."""
    from tuneforge import __version__

    config = ctx.config
    parts: dict[str, Any] = {"cache_version": CACHE_VERSION, "tuneforge": __version__, "kind": kind}
    from ..specs import BUILTIN_DATA_KINDS

    if kind not in BUILTIN_DATA_KINDS:  # a stage's own kind: its plugin (and version) builds the features
        parts["kind_provider"] = f"{ctx.plan.stage.name} {ctx.plan.stage.provider}"
    for group in ("datasets", "eval_datasets"):
        fingerprints = [dataset_fingerprint(p, ctx.manager) for p in getattr(ctx.plan, group)]
        if any(f is None for f in fingerprints):
            return None, parts
        parts[group] = fingerprints
    parts["template"] = template_fingerprint(ctx.template) if kind != "text" else None
    parts["tokenizer"] = tokenizer_fingerprint(ctx.tokenizer)
    parts["media"] = media_fingerprint(ctx)
    parts["settings"] = {
        **dataclasses.asdict(settings),
        "max_samples": config.max_samples,
        "mix_strategy": config.mix_strategy,
        "interleave_probs": config.interleave_probs,
        "replace_placeholders": config.replace_placeholders,
        "skip_bad_rows": config.skip_bad_rows,
        "preprocessing_batch_size": config.preprocessing_batch_size,
        "preprocessing_num_workers": config.preprocessing_num_workers,
        "ignore_pad_token_for_loss": config.ignore_pad_token_for_loss,
        "seed": config.seed,
    }
    parts["code"] = {name: _source_digest(importlib.import_module(f"{__package__}.{name}")) for name in _DATA_MODULES}
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32], parts


def entry_path(key: str) -> Path:
    return cache_root() / "datasets" / key


def load(path: Path):
    """``(DatasetDict, meta)`` of a cache entry, or None when there is no complete entry."""
    if not (path / META_FILE).is_file():
        return None
    from datasets import load_from_disk

    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        return load_from_disk(str(path)), meta
    except (OSError, ValueError, FileNotFoundError):
        return None  # damaged: rebuilt and replaced


def save(path: Path, features, meta: dict) -> None:
    """Write an entry atomically: a temporary folder renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{int(time.time() * 1000)}"
    try:
        features.save_to_disk(str(tmp))
        (tmp / META_FILE).write_text(json.dumps({**meta, "created": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1,
                                                sort_keys=True, default=str, ensure_ascii=False) + "\n", encoding="utf-8")
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
