"""Audios for Qwen2-Audio (``<audio>`` in the text, an ``audios`` column in dataset_info.json).

Audio files (mp3, wav, flac, or the audio track of a video) are decoded with PyAV, mixed down to mono
and resampled to ``audio_sampling_rate`` (LLaMA-Factory's key, default 16000). The model's feature
extractor (Whisper's log-mel, saved beside the model) turns them into ``input_features``, padded to
its 30 s window, and ``feature_attention_mask`` (one per 10 ms of real audio; longer audio is cut at
30 s, as in transformers' processor). An audio of ``L`` mel frames becomes
``<|audio_bos|>`` + ``((L - 1) // 2 + 1 - 2) // 2 + 1`` ``<|AUDIO|>`` + ``<|audio_eos|>``: the encoder's
stride-2 convolution then its stride-2 pooling, the count ``Qwen2AudioProcessor`` writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from tuneforge.data.media import MediaHandler


@dataclass(frozen=True)
class AudioSettings:
    sampling_rate: int = 16000

    @classmethod
    def from_config(cls, config) -> "AudioSettings":
        return cls(sampling_rate=int(config.get("audio_sampling_rate") or cls.sampling_rate))


@lru_cache(maxsize=4)
def feature_extractor(model_path: str):
    from transformers import AutoFeatureExtractor

    return AutoFeatureExtractor.from_pretrained(model_path)


@lru_cache(maxsize=64)
def read_audio(path: str, sampling_rate: int):
    """The file's first audio stream as mono float32 samples at ``sampling_rate`` (numpy array)."""
    import numpy as np

    from ._video import _av

    av = _av()
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sampling_rate)
    chunks = []
    with av.open(path) as container:
        for frame in container.decode(container.streams.audio[0]):
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    if not chunks:
        raise ValueError(f"{path}: no audio samples could be decoded")
    return np.concatenate(chunks).astype(np.float32)


def audio_tokens(mel_frames: int) -> int:
    """How many <|AUDIO|> tokens ``mel_frames`` frames of log-mel features become in Qwen2-Audio."""
    after_conv = (mel_frames - 1) // 2 + 1
    return (after_conv - 2) // 2 + 1


class Qwen2AudioMedia(MediaHandler):
    modalities = ("audios",)
    start, pad, end = "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"
    settings = AudioSettings()

    def configure(self, config):
        configured = super().configure(config)
        configured.settings = AudioSettings.from_config(config)
        return configured

    def describe(self) -> dict:
        return {"audio": asdict(self.settings)}

    def _features(self, paths: list[str], model_path: str) -> dict:
        extractor = feature_extractor(model_path)
        rate = self.settings.sampling_rate
        if rate != extractor.sampling_rate:
            from tuneforge.errors import TuneforgeError

            raise TuneforgeError(f"audio_sampling_rate {rate} differs from the rate the model's feature extractor was "
                                 f"made for ({extractor.sampling_rate} Hz, {model_path}/preprocessor_config.json): "
                                 f"set audio_sampling_rate: {extractor.sampling_rate}")
        return extractor([read_audio(p, rate) for p in paths], sampling_rate=rate, return_attention_mask=True,
                         padding="max_length", return_tensors="np")

    def counts(self, paths: list[str], model_path: str) -> list[int]:
        if not paths:
            return []
        mask = self._features(paths, model_path)["attention_mask"]
        return [audio_tokens(int(m.sum())) for m in mask]

    def expand(self, messages, media, model_path, tokenizer):
        counts = iter(self.counts(media.get("audios") or [], model_path))
        out = []
        for message in messages:
            content = message["content"]
            while "<audio>" in content:
                content = content.replace("<audio>", self.start + self.pad * next(counts) + self.end, 1)
            out.append({**message, "content": content})
        return out

    def media_token_ids(self, tokenizer):
        return {tokenizer.convert_tokens_to_ids(self.pad): 3}

    def inputs(self, media_rows, model_path, tokenizer) -> dict[str, Any]:
        import torch

        paths = [p for row in media_rows for p in (row.get("audios") or [])]
        if not paths:
            return {}
        features = self._features(paths, model_path)
        return {"input_features": torch.from_numpy(features["input_features"]),
                "feature_attention_mask": torch.from_numpy(features["attention_mask"]).long()}


HANDLERS = {"qwen2_audio": Qwen2AudioMedia}
