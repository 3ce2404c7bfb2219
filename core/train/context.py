"""The run context every plugin callable receives: config, plan, plugins and shared state."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.model import Config
from ..plan import Plan
from ..plugin_manager import PluginManager


@dataclass
class RunContext:
    config: Config
    plan: Plan
    manager: PluginManager
    training: bool = True
    model: Any = None
    tokenizer: Any = None
    template: Any = None  # tuneforge.data.template.Template once resolved
    metrics: dict = field(default_factory=dict)
    extras: dict = field(default_factory=dict)

    @property
    def media(self):
        """The template's media handler (tuneforge.data.media.MediaHandler) configured with the run's
        media keys (image_max_pixels...), None when text-only."""
        entry = self.plan.template if self.plan is not None else None
        media = getattr(entry.spec, "media", None) if entry is not None else None
        if media is not None:
            media = media.configure(self.config)
        return media

    @property
    def output_dir(self) -> Path:
        return Path(self.config.get("output_dir") or "output")

    @property
    def compute_dtype(self):
        """torch dtype from bf16/fp16 (training) or infer_dtype (inference); None means the checkpoint's."""
        import torch

        if self.config.get("bf16") or (self.training and self.config.get("pure_bf16")):
            return torch.bfloat16
        if self.config.get("fp16"):
            return torch.float16
        if not self.training and self.config.infer_dtype != "auto":
            return getattr(torch, self.config.infer_dtype)
        return torch.float32 if self.training else None

    def quantizer_load_kwargs(self) -> dict:
        quantizer = self.plan.quantizer
        if quantizer is None or quantizer.spec.load_kwargs is None:
            return {}
        return quantizer.spec.load_kwargs(self)
