"""LLaMA-Factory keys that tuneforge refuses, each with what the config needs instead.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RefusedKey:
    name: str
    reason: str


REFUSED_KEYS: dict[str, RefusedKey] = {}
