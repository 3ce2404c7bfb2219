"""Media handlers of the built-in multimodal templates (a template YAML's ``media:`` key names one).

Qwen2-VL: an image becomes ``<|vision_start|>`` + one ``<|image_pad|>`` per merged patch +
``<|vision_end|>``; the count is the image processor's grid (t*h*w) over ``merge_size**2``, exactly
what Qwen2-VL's processor writes. The image processor is the model folder's (``AutoImageProcessor``:
the PIL one when torchvision is missing).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from tuneforge.data.media import MediaHandler


@lru_cache(maxsize=4)
def image_processor(model_path: str):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(model_path)


class Qwen2VLMedia(MediaHandler):
    modalities = ("images",)
    start, pad, end = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"

    def _counts(self, paths: list[str], model_path: str) -> list[int]:
        if not paths:
            return []
        processor = image_processor(model_path)
        grids = processor(images=[self.open_image(p) for p in paths], return_tensors="np")["image_grid_thw"]
        merge = getattr(processor, "merge_size", 2) ** 2
        return [int(g.prod()) // merge for g in grids]

    def expand(self, messages, media, model_path, tokenizer):
        counts = iter(self._counts(media.get("images") or [], model_path))
        out = []
        for message in messages:
            content = message["content"]
            while "<image>" in content:
                content = content.replace("<image>", self.start + self.pad * next(counts) + self.end, 1)
            out.append({**message, "content": content})
        return out

    def media_token_ids(self, tokenizer):
        return {tokenizer.convert_tokens_to_ids(self.pad): 1, tokenizer.convert_tokens_to_ids("<|video_pad|>"): 2}

    def inputs(self, media_rows, model_path, tokenizer) -> dict[str, Any]:
        paths = [p for row in media_rows for p in (row.get("images") or [])]
        if not paths:
            return {}
        return dict(image_processor(model_path)(images=[self.open_image(p) for p in paths], return_tensors="pt"))


HANDLERS = {"qwen2_vl": Qwen2VLMedia}
