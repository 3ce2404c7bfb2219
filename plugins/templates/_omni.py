"""Images, videos and audios for Qwen2.5-Omni's thinker (``template: qwen2_omni``).

Each medium is prepared as for Qwen2-VL (images, videos: ``_media``, ``_video``) and Qwen2-Audio
(audios: ``_audio``), with Omni's markers: an image is ``<|vision_bos|>`` + ``<|IMAGE|>`` * n +
``<|vision_eos|>``, a video the same with ``<|VIDEO|>``, an audio ``<|audio_bos|>`` + ``<|AUDIO|>`` * n +
``<|audio_eos|>``.

``use_audio_in_video: true`` (LLaMA-Factory's key): the n-th video of a row is given its sound, the
row's n-th audio (the audio track of the video file when the row has no audio for it), and its
``<audio>`` placeholder is dropped. The video then becomes ``<|vision_bos|><|audio_bos|>`` + video and
audio tokens interleaved in time chunks + ``<|audio_eos|><|vision_eos|>``: every token has a time
position (``position_id_per_seconds`` per second, 25: one per audio token; a video token's is its
temporal group's start, ``temporal_patch_size / video_fps`` seconds per group), and each chunk of
``seconds_per_chunk`` seconds (2) gives its video tokens, then its audio tokens. This is the layout of
transformers' ``Qwen2_5OmniProcessor`` and the model's rotary positions expect it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

from tuneforge.data.media import MediaHandler

from ._audio import AudioSettings, Qwen2AudioMedia, audio_tokens
from ._media import image_processor
from ._video import VideoSettings, read_frames, video_patches


@lru_cache(maxsize=4)
def _thinker_config(model_path: str) -> dict:
    try:
        data = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data.get("thinker_config", data)  # a whole Qwen2.5-Omni checkpoint nests the thinker's


def chunk_sizes(positions: list[float], per_chunk: int) -> list[int]:
    """How many of the (non-decreasing) ``positions`` fall in each successive chunk of ``per_chunk``:
    a new chunk starts at the first position at or past the current bound, which then moves on by
    one chunk (transformers' ``get_chunked_index`` rule)."""
    sizes, start, bound = [], 0, per_chunk
    for index, position in enumerate(positions):
        if position >= bound:
            sizes.append(index - start)
            start, bound = index, bound + per_chunk
    sizes.append(len(positions) - start)
    return sizes


@lru_cache(maxsize=256)
def _own_sound(video: str) -> str:
    """A video file as its own sound (use_audio_in_video, and the row has no audio for it)."""
    from ._video import _av

    with _av().open(video) as container:
        if container.streams.audio:
            return video
    from tuneforge.errors import TuneforgeError

    raise TuneforgeError(f"use_audio_in_video: the video '{video}' has no audio track and its row no audio for it; "
                         "give each video its sound in the row's audios (the n-th video takes the n-th audio), "
                         "or set use_audio_in_video: false")


class Qwen2OmniMedia(MediaHandler):
    modalities = ("images", "videos", "audios")
    vision_bos, vision_eos, audio_bos, audio_eos = "<|vision_bos|>", "<|vision_eos|>", "<|audio_bos|>", "<|audio_eos|>"
    image, video, audio = "<|IMAGE|>", "<|VIDEO|>", "<|AUDIO|>"
    video_settings = VideoSettings()
    audio_settings = AudioSettings()
    audio_in_video = False

    def configure(self, config):
        configured = super().configure(config)
        configured.video_settings = VideoSettings.from_config(config)
        configured.audio_settings = AudioSettings.from_config(config)
        configured.audio_in_video = bool(config.get("use_audio_in_video"))
        return configured

    def describe(self) -> dict:
        return {"video": asdict(self.video_settings), "audio": asdict(self.audio_settings),
                "use_audio_in_video": self.audio_in_video}

    # --- the media of a row -------------------------------------------------------------------

    def _audio_handler(self) -> Qwen2AudioMedia:
        handler = Qwen2AudioMedia()
        handler.settings = self.audio_settings
        return handler

    def sounds(self, media: dict[str, list[str]]) -> tuple[list[str], list[str | None]]:
        """(the audios given on their own, each video's sound: a file or None)."""
        audios, videos = list(media.get("audios") or []), list(media.get("videos") or [])
        if not self.audio_in_video:
            return audios, [None] * len(videos)
        paired = [audios[i] if i < len(audios) else _own_sound(v) for i, v in enumerate(videos)]
        return audios[len(videos):], paired

    def _audio_features(self, paths: list[str], model_path: str) -> dict:
        return self._audio_handler()._features(paths, model_path)

    def _second_per_grid(self, model_path: str) -> float:
        return int(image_processor(model_path).temporal_patch_size) / self.video_settings.fps

    def expand(self, messages, media, model_path, tokenizer):
        processor = image_processor(model_path)
        merge = int(processor.merge_size) ** 2
        images = media.get("images") or []
        image_counts = iter([int(g.prod()) // merge for g in processor(images=[self.open_image(p) for p in images],
                                                                          return_tensors="np")["image_grid_thw"]]
                            if images else [])
        alone, paired = self.sounds(media)
        sounds = alone + [p for p in paired if p is not None]
        lengths = iter([audio_tokens(int(m.sum())) for m in self._audio_features(sounds, model_path)["attention_mask"]]
                       if sounds else [])
        alone_counts = [next(lengths) for _ in alone]
        paired_counts = [next(lengths) if p is not None else None for p in paired]
        video_texts = [self._video_text(path, count, model_path)
                       for path, count in zip(media.get("videos") or [], paired_counts)]
        alone_counts, video_texts = iter(alone_counts), iter(video_texts)
        dropped = min(len(paired), len(media.get("audios") or [])) if self.audio_in_video else 0
        out = []
        for message in messages:
            content = message["content"]
            while "<image>" in content:
                content = content.replace("<image>", self.vision_bos + self.image * next(image_counts) + self.vision_eos, 1)
            while "<video>" in content:
                content = content.replace("<video>", next(video_texts), 1)
                if dropped and "<audio>" in content:  # the video's own audio placeholder
                    content = content.replace("<audio>", "", 1)
                    dropped -= 1
            while "<audio>" in content:
                content = content.replace("<audio>", self.audio_bos + self.audio * next(alone_counts) + self.audio_eos, 1)
            out.append({**message, "content": content})
        return out

    def _video_text(self, path: str, audio_count: int | None, model_path: str) -> str:
        grid = video_patches(read_frames(path, self.video_settings), model_path)[1]
        merge = int(image_processor(model_path).merge_size)
        if audio_count is None:
            return self.vision_bos + self.video * (math.prod(grid) // merge ** 2) + self.vision_eos
        config = _thinker_config(model_path)
        per_second = config.get("position_id_per_seconds", 25)
        per_chunk = int(per_second * config.get("seconds_per_chunk", 2))
        step = self._second_per_grid(model_path) * per_second
        tokens_per_group = (grid[1] // merge) * (grid[2] // merge)
        video_positions = [t * step for t in range(grid[0]) for _ in range(tokens_per_group)]
        video_chunks = chunk_sizes(video_positions, per_chunk)
        audio_chunks = chunk_sizes(list(range(audio_count)), per_chunk)
        text = self.vision_bos + self.audio_bos
        for j in range(max(len(video_chunks), len(audio_chunks))):
            text += self.video * (video_chunks[j] if j < len(video_chunks) else 0)
            text += self.audio * (audio_chunks[j] if j < len(audio_chunks) else 0)
        return text + self.audio_eos + self.vision_eos

    def media_token_ids(self, tokenizer):
        return {tokenizer.convert_tokens_to_ids(t): kind for t, kind in ((self.image, 1), (self.video, 2), (self.audio, 3))}

    def inputs(self, media_rows, model_path, tokenizer) -> dict[str, Any]:
        import numpy as np
        import torch

        out: dict[str, Any] = {}
        images = [p for row in media_rows for p in (row.get("images") or [])]
        if images:
            pixels = image_processor(model_path)(images=[self.open_image(p) for p in images], return_tensors="np")
            out.update({k: torch.from_numpy(np.asarray(v)) for k, v in pixels.items()})
        videos = [p for row in media_rows for p in (row.get("videos") or [])]
        if videos:
            done = [video_patches(read_frames(p, self.video_settings), model_path) for p in videos]
            out["pixel_values_videos"] = torch.from_numpy(np.concatenate([d[0] for d in done]))
            out["video_grid_thw"] = torch.tensor([d[1] for d in done], dtype=torch.long)
            out["video_second_per_grid"] = torch.tensor([self._second_per_grid(model_path)] * len(done))
        # the audio features in the order their tokens come: per row, audios alone then the videos' sounds
        sounds = []
        for row in media_rows:
            alone, paired = self.sounds(row)
            sounds += alone + [p for p in paired if p is not None]
        if sounds:
            features = self._audio_features(sounds, model_path)
            out["input_features"] = torch.from_numpy(features["input_features"])
            out["feature_attention_mask"] = torch.from_numpy(features["attention_mask"]).long()
        if self.audio_in_video and videos:
            out["use_audio_in_video"] = True
        return out


HANDLERS = {"qwen2_omni": Qwen2OmniMedia}
