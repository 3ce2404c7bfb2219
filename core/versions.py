"""The tested version ranges of tuneforge's libraries, and the check LLaMA-Factory makes of them.

The ranges are the installed tuneforge's own requirements (pyproject.toml's dependencies and extras, as
pip recorded them), which are the versions the test suite runs on: one source, so a range can be no
narrower than what is tested (tests/test_versions.py holds that for every installed one).

A required library outside its range stops `check` / `train` / every verb that reads a config, as
llamafactory-cli does, naming the pip command; ``DISABLE_VERSION_CHECK=1`` turns that into a warning and
runs anyway. `tuneforge env` marks every installed library, optional ones too, that is outside its range.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import metadata

from .errors import Problem

DISTRIBUTION = "tuneforge"
SWITCH = "DISABLE_VERSION_CHECK"


@dataclass(frozen=True)
class Tested:
    package: str
    specifier: str  # e.g. ">=5.23,<5.24"
    extra: str | None  # None: a required dependency

    def contains(self, version: str) -> bool:
        from packaging.specifiers import SpecifierSet

        return SpecifierSet(self.specifier).contains(version, prereleases=True)


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def tested_ranges() -> dict[str, Tested]:
    """Package (normalised name) -> its tested range, from the installed tuneforge's requirements; empty
    when tuneforge runs from a tree that was never installed."""
    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return {}
    from packaging.requirements import Requirement

    out: dict[str, Tested] = {}
    for line in requires:
        req = Requirement(line)
        extra = None
        if req.marker is not None:
            found = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", str(req.marker))
            extra = found.group(1) if found else None
        if not str(req.specifier):
            continue
        name = _norm(req.name)
        if name in out and (out[name].extra is None or extra is not None):
            continue  # a required range wins over an extra's repetition; the first extra (not dev) names it
        out[name] = Tested(req.name, str(req.specifier), extra)
    return out


def installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def outside(only_required: bool = False) -> list[tuple[Tested, str]]:
    """(range, installed version) of every installed library outside its tested range."""
    found = []
    for tested in tested_ranges().values():
        if only_required and tested.extra is not None:
            continue
        version = installed(tested.package)
        if version is not None and not tested.contains(version):
            found.append((tested, version))
    return found


def disabled(env=None) -> bool:
    return str((os.environ if env is None else env).get(SWITCH, "0")).strip().lower() in ("1", "true", "y", "yes")


def _text(tested: Tested, version: str) -> str:
    return f"{tested.package} {version} is outside the tested range {tested.specifier}"


def version_problems(env=None) -> list[Problem]:
    """Required libraries outside their tested range (none with DISABLE_VERSION_CHECK=1)."""
    if disabled(env):
        return []
    return [Problem(tested.package, f"{version} is installed, outside tuneforge's tested range {tested.specifier}: "
                                    f"pip install '{tested.package}{tested.specifier}', or set {SWITCH}=1 to run "
                                    "anyway (untested)", "environment")
            for tested, version in outside(only_required=True)]


def version_warnings(env=None) -> list[str]:
    if not disabled(env):
        return []
    return [f"{_text(tested, version)}: running anyway ({SWITCH}=1)" for tested, version in outside(only_required=True)]
