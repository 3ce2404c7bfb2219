"""Images (and later videos, audios) in conversations: LLaMA-Factory's layout, checked row by row.

A dataset entry names its media columns in dataset_info.json (``"columns": {"images": "images"}``);
each row lists file paths, relative to ``media_dir`` (default: ``dataset_dir``), and its text holds one
``<image>`` placeholder per image. :func:`attach_media` adds the resolved paths to the converted
example (``example["images"] = [absolute paths]``), after checking what LLaMA-Factory only finds
mid-training: the placeholder count matches the number of files, and every file exists and opens.

What a model family does with them (how many tokens an image becomes, which model inputs it needs)
is a :class:`MediaHandler` on the template's spec (``ChatTemplateSpec.media``), so a third-party
plugin adds a family without touching the core. A template without one is text-only: a dataset with
a media column is then an error, never a silent drop.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import RowError

#: dataset_info.json column -> the placeholder that marks its place in the text.
MEDIA_COLUMNS = {"images": "<image>", "videos": "<video>", "audios": "<audio>"}


class MediaHandler:
    """How one model family turns media into tokens and model inputs (subclass it in a plugin).

    ``modalities``: the media columns it takes (``("images",)``). ``expand`` rewrites each placeholder
    in the messages into the model's own media tokens (as many as the media needs); ``media_token_ids``
    names those tokens (never trained: their labels are masked); ``inputs`` makes the batch's extra
    model inputs (``pixel_values``, ``image_grid_thw``...) from the rows' file lists.
    """

    modalities: tuple[str, ...] = ("images",)

    def configure(self, config) -> "MediaHandler":
        """The handler for one run's config (a handler whose output depends on keys such as
        ``video_fps`` returns a copy that knows them); the default ignores the config."""
        return self

    def describe(self) -> dict:
        """The settings that decide the features (part of the tokenised-data cache key)."""
        return {}

    def expand(self, messages: list[dict], media: dict[str, list[str]], model_path: str, tokenizer) -> list[dict]:
        raise NotImplementedError

    def media_token_ids(self, tokenizer) -> dict[int, int]:
        """Token id -> modality type (1 image, 2 video, 3 audio: transformers' ``mm_token_type_ids``)."""
        raise NotImplementedError

    def inputs(self, media_rows: list[dict[str, list[str]]], model_path: str, tokenizer) -> dict[str, Any]:
        raise NotImplementedError


def media_columns(attr) -> list[str]:
    """The media columns a dataset entry names (a column set to null is not one)."""
    return [c for c in MEDIA_COLUMNS if attr.column(c)]


def count_placeholders(example: dict, placeholder: str) -> int:
    texts = [m.get("content") or "" for m in example.get("messages") or []]
    texts += [example.get(k) or "" for k in ("chosen", "rejected") if isinstance(example.get(k), str)]
    return sum(t.count(placeholder) for t in texts)


@lru_cache(maxsize=4096)
def _unreadable(path: str, column: str) -> str | None:
    """Why the file cannot be used (None when it opens); images are decoded header-first by PIL."""
    file = Path(path)
    if not file.is_file():
        return "does not exist"
    if column == "images":
        try:
            from PIL import Image

            with Image.open(file) as image:
                image.verify()
        except Exception as exc:  # PIL raises many kinds
            return f"is not a readable image ({type(exc).__name__}: {exc})"
    elif not file.stat().st_size:
        return "is empty"
    elif column in ("videos", "audios"):
        return _undecodable(file, column[:-1])
    return None


def _undecodable(file: Path, kind: str) -> str | None:
    """Why PyAV cannot read a video (or audio) stream from the file; None when it decodes."""
    try:
        import av
    except ImportError:
        return f"cannot be checked: {kind}s are decoded with PyAV, which is not installed (pip install 'tuneforge[vision]')"
    try:
        with av.open(str(file)) as container:
            streams = container.streams.video if kind == "video" else container.streams.audio
            if not streams:
                return f"has no {kind} stream"
            next(container.decode(streams[0]))
    except StopIteration:
        return f"has no decodable {kind} frames"
    except Exception as exc:  # PyAV raises many kinds (FFmpegError subclasses, ValueError...)
        return f"is not a readable {kind} ({type(exc).__name__}: {exc})"
    return None


def attach_media(row: dict, attr, example: dict, media_dir: str | Path) -> dict:
    """Add the row's media (absolute paths) to ``example``; RowError naming the field on a bad one."""
    for column, placeholder in MEDIA_COLUMNS.items():
        source = attr.column(column)
        if not source:
            continue
        value = row.get(source)
        if value is None:
            value = []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RowError(source, f"must be a list of file paths, got {type(value).__name__}")
        found = count_placeholders(example, placeholder)
        if found != len(value):
            raise RowError(source, f"{len(value)} {column[:-1]} file(s) but {found} {placeholder} placeholder(s) in the text; "
                                   f"put one {placeholder} where each {column[:-1]} goes, in order")
        paths = []
        for index, name in enumerate(value):
            path = Path(name) if Path(name).is_absolute() else Path(media_dir) / name
            why = _unreadable(str(path), column)
            if why:
                raise RowError(f"{source}[{index}]", f"'{name}' ({path}) {why}")
            paths.append(str(path.resolve()))
        example[column] = paths
    return example


def text_only_message(attr, column: str, template: str | None, config=None, takes: tuple[str, ...] = ()) -> str:
    """The error for media data and a template that has no media handler."""
    from .registry import model_is_multimodal

    kind = column[:-1]
    which = f"template '{template}' is text-only" if template else "no multimodal template is selected"
    if takes:  # a multimodal template, for other media
        which = f"template '{template}' takes only {' and '.join(takes)}, not {column}"
    elif config is not None and model_is_multimodal(config) is False:
        which = f"{config.get('model_name_or_path')} is a text-only model ({which})"
    return (f"dataset '{attr.name}' has the media column '{column}' (dataset_info.json columns.{column}), but {which}: "
            f"its {column} would be dropped and <{kind}> trained as plain text. Use a vision/audio-language model "
            f"with its multimodal template (e.g. template: qwen2_vl; `tuneforge plugins --kind template` lists them), "
            f"or, to train on the text alone on purpose, set \"{column}\": null in the dataset's columns")


def mask_media_labels(input_ids: list[int], labels: list[int], media_ids: dict[int, int]) -> list[int]:
    """Media tokens are inputs, never targets (also under train_on_prompt)."""
    from .template import IGNORE_INDEX

    return [IGNORE_INDEX if token in media_ids else label for token, label in zip(input_ids, labels)]
