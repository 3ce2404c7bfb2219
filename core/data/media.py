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
    #: The :data:`PROCESSOR_IMAGE_KEYS` this handler passes to the model's image processor.
    processor_image_keys: tuple[str, ...] = ()
    #: The run's preprocessing keys (:data:`OPTION_KEYS`), set on the copy :meth:`configure` makes.
    options: dict[str, Any] = {}

    def configure(self, config) -> "MediaHandler":
        """A copy of this handler for one run: ``options`` holds the config's image preprocessing keys,
        which :meth:`open_image` applies. A handler whose output depends on more keys (``video_fps``...)
        extends it: ``configured = super().configure(config)``, then sets what it reads."""
        clone = copy.copy(self)
        clone.options = {key: config.get(key) for key in OPTION_KEYS if config.get(key) is not None}
        is_set = getattr(config, "is_set", None)  # a key left unset keeps the checkpoint's own setting
        clone.options.update({key: config.get(key) for key in PROCESSOR_IMAGE_KEYS if is_set and is_set(key)})
        return clone

    def open_image(self, path: str):
        """The image at ``path`` as the processor should get it: RGB, resized into
        [image_min_pixels, image_max_pixels] as LLaMA-Factory does (see :func:`fit_pixels`)."""
        from PIL import Image

        with Image.open(path) as image:
            image = image.convert("RGB")
        return fit_pixels(image, self.options.get("image_max_pixels"), self.options.get("image_min_pixels"))

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

    def token_types_key(self, model_path: str) -> str | None:
        """The model input that marks the media tokens (1 image, 2 video, 3 audio), built by the collator
        from :meth:`media_token_ids`: ``mm_token_type_ids`` (transformers' name), ``token_type_ids``
        (Gemma 3), or None for a model that takes no such input (LLaVA)."""
        return "mm_token_type_ids"


#: The config keys that change how media become model inputs (a handler reads them from ``options``).
OPTION_KEYS = ("image_max_pixels", "image_min_pixels")
#: LLaMA-Factory's image keys that are settings of the model's own image processor: config key -> the
#: processor's argument. The processor handler passes one when the config sets it and the model's image
#: processor has that setting (Gemma 3's pan and scan, InternVL's crops); else it says it has no effect.
PROCESSOR_IMAGE_KEYS = {"image_do_pan_and_scan": "do_pan_and_scan", "crop_to_patches": "crop_to_patches"}


def processor_key_warnings(config, template: str | None, media: "MediaHandler | None") -> list[str]:
    """`tuneforge check`'s word on a :data:`PROCESSOR_IMAGE_KEYS` key set true under a template whose
    media handler does not pass it to an image processor (it would do nothing)."""
    out = []
    for key, argument in PROCESSOR_IMAGE_KEYS.items():
        if config.get(key) and key not in getattr(media, "processor_image_keys", ()):
            out.append(f"{key} ({config.where(key)}) has no effect with template '{template}': its media handler does "
                       f"not pass '{argument}' to an image processor (it acts with `media: processor` templates whose "
                       "image processor has that setting: gemma3's pan and scan, intern_vl's crop_to_patches)")
    return out


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


# --------------------------------------------------------------------------------------------------
# The generic handler: a template YAML's `media: processor` + `media_placeholders: {image: "..."}`.
# --------------------------------------------------------------------------------------------------

#: ``media_placeholders`` keys -> the dataset column they stand for.
PLACEHOLDER_KEYS = {"image": "images", "video": "videos", "audio": "audios"}
#: The media the processor handler feeds today (videos and audios: accepted keys, not fed yet).
PROCESSOR_MODALITIES = ("image",)
#: What the processor returns besides the media inputs: the text side, rebuilt by tuneforge itself.
_TEXT_KEYS = frozenset({"input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids", "text_replacement_offsets"})


@lru_cache(maxsize=8)
def load_processor(model_path: str):
    """The model's own multimodal processor (``AutoProcessor``). Where transformers cannot build it whole
    (a processor with a video part needs torchvision, which the CPU machines lack), it is assembled
    from the processor class ``processor_config.json`` / ``preprocessor_config.json`` names, the
    folder's image processor (the PIL one without torchvision) and its tokenizer; the parts it cannot
    build (the video processor) are left out, so images work and videos do not."""
    import importlib.util

    from ..errors import TuneforgeError

    if importlib.util.find_spec("torchvision") is None:
        try:  # AutoProcessor would spend seconds failing on the video processor first
            return _assemble_processor(model_path)
        except Exception:  # noqa: S110 - AutoProcessor below says why, or builds a processor without a video part
            pass
    try:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(model_path)
        if getattr(processor, "image_processor", None) is not None and getattr(processor, "tokenizer", None) is not None:
            return processor
        why = f"AutoProcessor gave {type(processor).__name__}, which has no image processor and tokenizer"
    except Exception as exc:  # transformers raises many kinds here
        why = f"AutoProcessor failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    try:
        return _assemble_processor(model_path)
    except Exception as exc:
        raise TuneforgeError(f"cannot build the multimodal processor of {model_path} ({why}; assembling it from its "
                             f"parts failed too: {type(exc).__name__}: {exc}). A `media: processor` template needs the "
                             "model folder's processor_config.json (or preprocessor_config.json with processor_class), "
                             "image processor and tokenizer") from None


def _assemble_processor(model_path: str):
    import json

    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    folder = Path(model_path)
    config: dict = {}
    for name in ("processor_config.json", "preprocessor_config.json"):
        if (folder / name).is_file():
            data = json.loads((folder / name).read_text(encoding="utf-8"))
            if data.get("processor_class"):
                config = data
                break
    class_name = config.get("processor_class")
    cls = getattr(transformers, str(class_name), None) if class_name else None
    if cls is None:
        raise ValueError(f"no processor_class in {folder}/processor_config.json or preprocessor_config.json")
    base = cls

    def lenient(self, name, argument):  # a part left out (None) is not checked against its class
        return None if argument is None else base.check_argument_for_proper_class(self, name, argument)

    assembled = type(cls.__name__, (cls,), {"check_argument_for_proper_class": lenient})
    parts = {name: None for name in cls.get_attributes()}
    parts["image_processor"] = AutoImageProcessor.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    parts["tokenizer"] = tokenizer
    kwargs = {k: v for k, v in config.items() if k != "processor_class" and not k.endswith("_processor")
              and not isinstance(v, dict)}
    return assembled(**parts, **kwargs, chat_template=getattr(tokenizer, "chat_template", None))


class ProcessorMedia(MediaHandler):
    """Media through the model's own processor, driven by the template's ``media_placeholders``.

    ``<image>`` in the text becomes ``media_placeholders["image"]`` (what the processor expects in the
    text for an image, e.g. Gemma 3's ``<start_of_image>``); the processor then expands its image token
    in it into as many media tokens as that image needs, exactly as its ``__call__`` does, and makes the
    pixel inputs. The media tokens are the processor's ``image_token_ids``; the per-token type input
    is whichever of ``mm_token_type_ids`` / ``token_type_ids`` the processor itself returns.
    """

    processor_image_keys = tuple(PROCESSOR_IMAGE_KEYS)

    def __init__(self, placeholders: dict[str, str], first: bool = False):
        self.placeholders = dict(placeholders)
        #: ``media_first: true``: a message's images go before its text, whatever their place in it, as
        #: chat templates that render image content parts first do (llava-hf's)
        self.first = first
        self.modalities = tuple(PLACEHOLDER_KEYS[k] for k in PROCESSOR_MODALITIES if k in self.placeholders)

    def describe(self) -> dict:
        return {"media_first": True} if self.first else {}

    def _image_texts(self, processor, paths: list[str]) -> list[str]:
        from ..errors import TuneforgeError

        placeholder = self.placeholders["image"]
        token = getattr(processor, "image_token", None)
        if not token or token not in placeholder:
            raise TuneforgeError(f"media_placeholders.image is {placeholder!r}, but {type(processor).__name__} expands "
                                 f"{token!r}: the placeholder must contain the processor's image token")
        result = processor(text=[placeholder * len(paths)], images=[self.open_image(p) for p in paths],
                           return_text_replacement_offsets=True, **self._image_kwargs(processor))
        replacements = [o["replacement"] for o in result["text_replacement_offsets"][0] if o["type"] == "image"]
        return [placeholder.replace(token, r, 1) for r in replacements]

    def _image_kwargs(self, processor) -> dict[str, Any]:
        """The image-processor settings the config sets (:data:`PROCESSOR_IMAGE_KEYS`) that this model's
        image processor has; one it lacks is said once and left out."""
        image_processor = getattr(processor, "image_processor", None)
        kwargs = {}
        for key, argument in PROCESSOR_IMAGE_KEYS.items():
            if key not in self.options:
                continue
            if hasattr(image_processor, argument):
                kwargs[argument] = bool(self.options[key])
            elif self.options[key]:
                _say_once(f"{key}: has no effect with {type(image_processor).__name__}, which has no "
                          f"'{argument}' setting (it acts on image processors that have one: Gemma 3's pan and "
                          "scan, InternVL's crop_to_patches)")
        return kwargs

    def expand(self, messages, media, model_path, tokenizer):
        self._model_path = str(model_path)
        paths = media.get("images") or []
        if not paths:
            return messages
        texts = iter(self._image_texts(load_processor(model_path), paths))
        out = []
        for message in messages:
            pieces = message["content"].split("<image>")
            if self.first:
                content = "".join(next(texts) for _ in pieces[1:]) + "".join(pieces)
            else:
                content = pieces[0] + "".join(next(texts) + rest for rest in pieces[1:])
            out.append({**message, "content": content})
        return out

    def media_token_ids(self, tokenizer):
        # the tokenizer is the model folder's (its name_or_path); else the model this handler last served
        processor = _processor_if_any(str(tokenizer.name_or_path))
        if processor is None and getattr(self, "_model_path", None):
            processor = _processor_if_any(self._model_path)
        if processor is None:  # a text-only model under a template that also serves its VLM (gemma3)
            return {}
        out: dict[int, int] = {}
        for kind, ids in ((1, processor.image_token_ids), (2, getattr(processor, "video_token_ids", [])),
                          (3, getattr(processor, "audio_token_ids", []))):
            out.update({int(i): kind for i in ids or [] if i is not None and int(i) not in out})
        return out

    def token_types_key(self, model_path: str) -> str | None:
        self._model_path = str(model_path)
        if _processor_if_any(model_path) is None:
            return None
        return _token_types_key(model_path, self.placeholders["image"])

    def inputs(self, media_rows, model_path, tokenizer) -> dict[str, Any]:
        paths = [p for row in media_rows for p in (row.get("images") or [])]
        if not paths:
            return {}
        processor = load_processor(model_path)
        result = processor(text=[self.placeholders["image"] * len(paths)], images=[self.open_image(p) for p in paths],
                           return_tensors="pt", **self._image_kwargs(processor))
        return {k: v for k, v in result.items() if k not in _TEXT_KEYS}


@lru_cache(maxsize=32)
def _say_once(message: str) -> None:
    import sys

    print(f"warning: {message}", file=sys.stderr)


@lru_cache(maxsize=8)
def _processor_if_any(model_path: str):
    """The model's processor, or None for a model without one (text-only: its rows have no media)."""
    from ..errors import TuneforgeError

    try:
        return load_processor(model_path)
    except TuneforgeError:
        return None


@lru_cache(maxsize=8)
def _token_types_key(model_path: str, placeholder: str) -> str | None:
    """What the processor itself returns to mark media tokens, probed once on a blank image."""
    from PIL import Image

    result = load_processor(model_path)(text=[placeholder], images=[Image.new("RGB", (32, 32))])
    return next((k for k in ("mm_token_type_ids", "token_type_ids") if k in result), None)


def media_from_definition(name: str, definition: dict) -> MediaHandler | None:
    """The handler a template definition selects (``media: processor`` + ``media_placeholders``);
    None for a text-only one. A bad value is a ValueError naming the template and the key."""
    kind, placeholders = definition.get("media"), definition.get("media_placeholders")
    if kind is None:
        # placeholders alone document the processor's text; the template stays text-only (media rows are
        # refused at check) until it selects a handler
        return None
    where = f"template '{name}'"
    if kind != "processor":
        raise ValueError(f"{where}: media: {kind!r} is not a media handler of the template definition; use "
                         "`media: processor` with `media_placeholders: {image: \"<the processor's image token>\"}`, "
                         "or give ChatTemplateSpec.media a MediaHandler")
    if not isinstance(placeholders, dict) or not placeholders:
        raise ValueError(f"{where}: media: processor needs media_placeholders, a mapping such as "
                         "{image: \"<start_of_image>\"} (what the model's processor expects in the text per medium)")
    for key, value in placeholders.items():
        if key not in PLACEHOLDER_KEYS:
            raise ValueError(f"{where}: media_placeholders.{key}: unknown medium; use {', '.join(PLACEHOLDER_KEYS)}")
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where}: media_placeholders.{key} must be a non-empty string, got {value!r}")
    first = definition.get("media_first", False)
    if not isinstance(first, bool):
        raise ValueError(f"{where}: media_first must be true or false, got {first!r}")
    if "image" not in placeholders:
        raise ValueError(f"{where}: media_placeholders has no image entry; the processor handler feeds images "
                         "(video and audio entries are accepted but not fed yet)")
    return ProcessorMedia(placeholders, first=first)


#: The processor's own files: written beside a trained model so it reloads as the VLM it is.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")


def save_processor_files(model_path: str, output_dir) -> list[str]:
    """Copy the model's processor files into ``output_dir`` (a full fine-tune's folder then loads with its
    processor, for `chat` and `export`); returns the names copied."""
    import shutil

    from transformers.utils import cached_file

    copied = []
    for name in PROCESSOR_FILES:
        target = Path(output_dir) / name
        if target.exists():
            continue
        try:
            source = cached_file(str(model_path), name, _raise_exceptions_for_missing_entries=False,
                                 _raise_exceptions_for_connection_errors=False)
        except Exception:  # noqa: S112 - a model without the file (or offline): nothing to copy
            continue
        if source:
            shutil.copyfile(source, target)
            copied.append(name)
    return copied
