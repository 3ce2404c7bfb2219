"""Videos for Qwen2-VL / Qwen2.5-VL (``<video>`` in the text, a ``videos`` column in dataset_info.json).

Frames are decoded with PyAV (``pip install 'tuneforge[vision]'``), on every machine: transformers'
Qwen2-VL video processor needs torchvision, which does not install beside the CPU torch. The rules
are LLaMA-Factory's, so a config means the same thing in both:

- sampling: ``floor(duration * video_fps)`` frames (at least 1), at most ``video_maxlen`` and at most
  the frames the file has, spread evenly from the first frame to the last;
- each frame is scaled (aspect kept) to at most ``video_max_pixels`` and at least ``video_min_pixels``;
- an odd number of frames gets its last frame repeated (Qwen2-VL pairs frames: ``temporal_patch_size``).

Then the model's own patching rules, computed here with numpy (the same arithmetic as transformers'
``Qwen2VLVideoProcessor``): each frame is snapped to multiples of ``patch_size * merge_size`` within the
processor's pixel bounds (``video_preprocessor_config.json`` when the model folder has one, else its
image processor's), normalised with the image processor's mean/std, and cut into patches of
``temporal_patch_size`` frames. A video's grid is ``(frames / temporal_patch_size, h / patch, w / patch)``
and it becomes ``<|vision_start|>`` + ``grid.prod() / merge_size**2`` ``<|video_pad|>`` + ``<|vision_end|>``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ._media import Qwen2VLMedia, image_processor


@dataclass(frozen=True)
class VideoSettings:
    """The config keys that decide what a video becomes (LLaMA-Factory's names and defaults)."""

    fps: float = 2.0
    maxlen: int = 128
    max_pixels: int = 256 * 256
    min_pixels: int = 16 * 16

    @classmethod
    def from_config(cls, config) -> "VideoSettings":
        return cls(fps=float(config.get("video_fps") or cls.fps), maxlen=int(config.get("video_maxlen") or cls.maxlen),
                   max_pixels=int(config.get("video_max_pixels") or cls.max_pixels),
                   min_pixels=int(config.get("video_min_pixels") or cls.min_pixels))


def _av():
    try:
        import av
    except ImportError as exc:  # a clear message, not a traceback
        from tuneforge.errors import TuneforgeError

        raise TuneforgeError("videos need PyAV to decode their frames: pip install 'tuneforge[vision]' (or av)") from exc
    return av


def sample_indices(total_frames: int, duration: float, settings: VideoSettings) -> list[int]:
    """Which frames of a video are kept: ``floor(duration * fps)`` (>= 1), capped by ``maxlen`` and by
    the frames there are, evenly spaced over the whole video (first and last included)."""
    if total_frames <= 0:
        return []
    wanted = max(1, math.floor(duration * settings.fps))
    count = min(total_frames, settings.maxlen, wanted)
    if count == 1:
        return [0]
    step = (total_frames - 1) / (count - 1)
    return [int(i * step) for i in range(count)]


def _scaled(image, settings: VideoSettings):
    """The frame scaled (aspect kept) into [min_pixels, max_pixels]."""
    width, height = image.size
    pixels = width * height
    if pixels > settings.max_pixels or pixels < settings.min_pixels:
        factor = math.sqrt((settings.max_pixels if pixels > settings.max_pixels else settings.min_pixels) / pixels)
        image = image.resize((max(1, int(width * factor)), max(1, int(height * factor))))
    return image.convert("RGB") if image.mode != "RGB" else image


@lru_cache(maxsize=16)
def read_frames(path: str, settings: VideoSettings) -> tuple:
    """The sampled, scaled frames of a video (PIL images), odd counts padded to an even one."""
    av = _av()
    with av.open(path) as container:
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = (container.duration or 0) / 1_000_000
        total = stream.frames
        if total > 0 and duration:  # only the sampled frames are converted
            wanted = set(sample_indices(total, duration, settings))
            frames = {i: frame.to_image() for i, frame in enumerate(container.decode(stream)) if i in wanted}
        else:  # a container that does not say how many frames it has: count them by decoding
            frames = dict(enumerate(frame.to_image() for frame in container.decode(stream)))
            duration = duration or len(frames) / float(stream.average_rate or 1)
            wanted = set(sample_indices(len(frames), duration, settings))
    picked = [_scaled(frames[i], settings) for i in sorted(wanted) if i in frames]
    if not picked:
        raise ValueError(f"{path}: no video frames could be decoded")
    if len(picked) % 2:
        picked.append(picked[-1])
    return tuple(picked)


def _smart_size(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule: both sides multiples of ``factor``, the area within the bounds, aspect kept."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


@lru_cache(maxsize=4)
def video_bounds(model_path: str) -> tuple[int, int]:
    """(min_pixels, max_pixels) per frame: the model's video processor config, else its image processor's."""
    file = Path(model_path) / "video_preprocessor_config.json"
    if file.is_file():
        size = json.loads(file.read_text(encoding="utf-8")).get("size") or {}
        if size.get("shortest_edge") and size.get("longest_edge"):
            return int(size["shortest_edge"]), int(size["longest_edge"])
    size = image_processor(model_path).size
    return int(size["shortest_edge"]), int(size["longest_edge"])


def video_patches(frames, model_path: str):
    """(patches [t*h*w, C*tp*p*p] float32, grid (t, h, w)) of one video, as Qwen2-VL's video processor
    lays them out."""
    import numpy as np
    from PIL import Image

    processor = image_processor(model_path)
    patch, merge = int(processor.patch_size), int(processor.merge_size)
    temporal = int(processor.temporal_patch_size)
    low, high = video_bounds(model_path)
    width, height = frames[0].size
    h, w = _smart_size(height, width, patch * merge, low, high)
    mean = np.asarray(processor.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(processor.image_std, dtype=np.float32)[:, None, None]
    array = np.stack([
        (np.asarray(f.resize((w, h), Image.BICUBIC), dtype=np.float32).transpose(2, 0, 1) / 255.0 - mean) / std
        for f in frames
    ])
    if pad := -len(array) % temporal:
        array = np.concatenate([array, np.repeat(array[-1:], pad, axis=0)])
    t, c = len(array) // temporal, array.shape[1]
    gh, gw = h // patch, w // patch
    array = array.reshape(t, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    array = array.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(array.reshape(t * gh * gw, c * temporal * patch * patch)), (t, gh, gw)


@lru_cache(maxsize=4)
def _model_type(model_path: str) -> str | None:
    file = Path(model_path) / "config.json"
    try:
        return json.loads(file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None


class Qwen2VLVideoMedia(Qwen2VLMedia):
    """Qwen2-VL's images (see ``_media``) and videos."""

    modalities = ("images", "videos")
    video_pad = "<|video_pad|>"
    settings = VideoSettings()

    def configure(self, config):
        configured = super().configure(config)
        configured.settings = VideoSettings.from_config(config)
        return configured

    def describe(self) -> dict:
        return {"video": asdict(self.settings)}

    def video_grids(self, paths: list[str], model_path: str) -> list[tuple[int, int, int]]:
        return [video_patches(read_frames(p, self.settings), model_path)[1] for p in paths]

    def expand(self, messages, media, model_path, tokenizer):
        messages = super().expand(messages, media, model_path, tokenizer)
        merge = int(getattr(image_processor(model_path), "merge_size", 2)) ** 2
        counts = iter(math.prod(g) // merge for g in self.video_grids(media.get("videos") or [], model_path))
        out = []
        for message in messages:
            content = message["content"]
            while "<video>" in content:
                content = content.replace("<video>", self.start + self.video_pad * next(counts) + self.end, 1)
            out.append({**message, "content": content})
        return out

    def inputs(self, media_rows, model_path, tokenizer) -> dict[str, Any]:
        import numpy as np
        import torch

        out = super().inputs(media_rows, model_path, tokenizer)
        paths = [p for row in media_rows for p in (row.get("videos") or [])]
        if paths:
            done = [video_patches(read_frames(p, self.settings), model_path) for p in paths]
            out["pixel_values_videos"] = torch.from_numpy(np.concatenate([d[0] for d in done]))
            out["video_grid_thw"] = torch.tensor([d[1] for d in done], dtype=torch.long)
            if _model_type(model_path) == "qwen2_5_vl":  # its rotary positions count time in seconds
                temporal = int(image_processor(model_path).temporal_patch_size)
                out["second_per_grid_ts"] = torch.tensor([temporal / self.settings.fps] * len(done))
        return out


HANDLERS = {"qwen2_vl": Qwen2VLVideoMedia}
