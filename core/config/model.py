"""The validated config: user values over declared defaults, each value with its source."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .hf_training_args import HF_TRAINING_ARGS


@dataclass
class Config:
    """Attribute access returns the user's value, else the declared default of the key's owner.

    Only keys that are declared somewhere (core, a plugin, or TrainingArguments) are readable; a
    typo in code fails loudly instead of reading ``None``.
    """

    values: dict[str, Any]
    defaults: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("values", "defaults", "sources", "path"):
            raise AttributeError(name)
        if name in self.values:
            return self.values[name]
        if name in self.defaults:
            return self.defaults[name]
        raise AttributeError(f"config key '{name}' is not declared by the core or any plugin")

    def get(self, name: str, default: Any = None) -> Any:
        try:
            return getattr(self, name)
        except AttributeError:
            return default

    def is_set(self, name: str) -> bool:
        return name in self.values

    def where(self, name: str) -> str:
        return self.sources.get(name, "default")

    def hf_training_args(self) -> dict[str, Any]:
        """The TrainingArguments keys the user set, to pass to the trainer."""
        return {k: v for k, v in self.values.items() if k in HF_TRAINING_ARGS}

    def as_dict(self) -> dict[str, Any]:
        """Every key the user set, for training_args.yaml and the run manifest."""
        return dict(self.values)

    def with_values(self, **updates: Any) -> "Config":
        return Config({**self.values, **updates}, self.defaults, dict(self.sources), self.path)
