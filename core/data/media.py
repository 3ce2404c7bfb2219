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

import copy
import math
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
    #: The run's preprocessing keys (:data:`OPTION_KEYS`), set on the copy :meth:`configured` makes.
    options: dict[str, Any] = {}

    def configured(self, config) -> "MediaHandler":
        """A copy of this handler for a run: ``options`` holds the config's media preprocessing keys."""
        clone = copy.copy(self)
        clone.options = {key: config.get(key) for key in OPTION_KEYS if config.get(key) is not None}
        return clone

    def open_image(self, path: str):
        """The image at ``path`` as the processor should get it: RGB, resized into
        [image_min_pixels, image_max_pixels] as LLaMA-Factory does (see :func:`fit_pixels`)."""
        from PIL import Image

        with Image.open(path) as image:
            image = image.convert("RGB")
        return fit_pixels(image, self.options.get("image_max_pixels"), self.options.get("image_min_pixels"))

    def expand(self, messages: list[dict], media: dict[str, list[str]], model_path: str, tokenizer) -> list[dict]:
        raise NotImplementedError

    def media_token_ids(self, tokenizer) -> dict[int, int]:
        """Token id -> modality type (1 image, 2 video, 3 audio: transformers' ``mm_token_type_ids``)."""
        raise NotImplementedError

    def inputs(self, media_rows: list[dict[str, list[str]]], model_path: str, tokenizer) -> dict[str, Any]:
        raise NotImplementedError


#: The config keys that change how media become model inputs (a handler reads them from ``options``).
OPTION_KEYS = ("image_max_pixels", "image_min_pixels")


def fit_pixels(image, max_pixels: int | None, min_pixels: int | None):
    """LLaMA-Factory's image preprocessing: an image of more than ``max_pixels`` pixels (width x height)
    is scaled down, one of fewer than ``min_pixels`` scaled up, by the same factor on both sides
    (sqrt(limit / pixels), sizes rounded down), keeping its aspect ratio; the model's own processor then
    resizes it to its patch grid. So the number of image tokens follows the image's pixels after this."""
    from PIL import Image

    pixels = image.width * image.height
    for limit, outside in ((max_pixels, lambda: pixels > max_pixels), (min_pixels, lambda: pixels < min_pixels)):
        if limit and outside():
            factor = math.sqrt(limit / pixels)
            size = (max(1, int(image.width * factor)), max(1, int(image.height * factor)))
            return image.resize(size, resample=Image.Resampling.BICUBIC)
    return image


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


def text_only_message(attr, column: str, template: str | None, config=None) -> str:
    """The error for media data and a template that has no media handler."""
    from .registry import model_is_multimodal

    kind = column[:-1]
    which = f"template '{template}' is text-only" if template else "no multimodal template is selected"
    if config is not None and model_is_multimodal(config) is False:
        which = f"{config.get('model_name_or_path')} is a text-only model ({which})"
    return (f"dataset '{attr.name}' has the media column '{column}' (dataset_info.json columns.{column}), but {which}: "
            f"its {column} would be dropped and <{kind}> trained as plain text. Use a vision/audio-language model "
            f"with its multimodal template (e.g. template: qwen2_vl; `tuneforge plugins --kind template` lists them), "
            f"or, to train on the text alone on purpose, set \"{column}\": null in the dataset's columns")


def mask_media_labels(input_ids: list[int], labels: list[int], media_ids: dict[int, int]) -> list[int]:
    """Media tokens are inputs, never targets (also under train_on_prompt)."""
    from .template import IGNORE_INDEX

    return [IGNORE_INDEX if token in media_ids else label for token, label in zip(input_ids, labels)]
