"""Errors users see. Each says what is wrong, where, and how to fix it.

The CLI prints a :class:`TuneforgeError` as ``error: <message>`` with no traceback; anything else is a
bug in tuneforge or a plugin and keeps its traceback.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or an empty string."""
    matches = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{matches[0]}'?" if matches else ""


class TuneforgeError(Exception):
    """A problem the user can fix; printed without a traceback."""


@dataclass(frozen=True)
class Problem:
    """One config problem: the key, where it came from, and the message."""

    key: str
    message: str
    where: str = ""

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        return f"{prefix}{self.key}: {self.message}" if self.key else f"{prefix}{self.message}"


class ConfigError(TuneforgeError):
    """Every problem found in a config, reported at once."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        count = len(self.problems)
        lines = [f"the config has {count} problem{'s' if count != 1 else ''}:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class PluginError(TuneforgeError):
    """A plugin is unknown, duplicated, disabled, broken or missing a dependency."""


class DataError(TuneforgeError):
    """Rows of a dataset failed validation; the message names file, row, field and reason."""


class RowError(ValueError):
    """Raised by a dataset format's ``convert`` for one bad row."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")
