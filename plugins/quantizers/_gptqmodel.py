"""What the GPTQ and AWQ quantizers share: both load through gptqmodel (pinned versions, its CPU
worker pool). Private to the quantizer family."""

from __future__ import annotations

import os
from importlib import metadata

VERSIONS = {"gptqmodel": ("7.6", "8"), "optimum": ("2.3", "3")}
INSTALL = "pip install 'tuneforge[gptq]'"


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def unavailable_reason() -> str | None:
    """A gptqmodel/optimum outside the tested range (both present: `requires` reports a missing one)."""
    for dist, (low, high) in VERSIONS.items():
        try:
            have = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        if not _version_tuple(low) <= _version_tuple(have) < _version_tuple(high):
            return f"{dist} {have} is installed; this plugin needs {dist} >={low},<{high} ({INSTALL})"
    return None


def set_cpu_workers(config=None) -> None:
    """GPTQMODEL_CPU_WORKERS for gptqmodel's thread pool, before gptqmodel is first imported."""
    workers = config.get("gptq_cpu_workers") if config is not None else None
    if workers is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        workers = max(2, cores)
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, int(workers))))
