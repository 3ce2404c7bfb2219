"""Peak RSS of training on CPU: large freed tensor buffers go back to the system.

On CPU, tensors live in the C library's heap. glibc's malloc raises its mmap threshold every time
it frees a large mapped block, so after the first steps every activation buffer (one to tens of MiB)
comes from the main heap; freed ones leave holes that later buffers of other sizes do not fit, and
the heap's high-water mark ends far above what is live. Measured on the 27M small model (LoRA, four
alpaca rows a step): the steps added 758 MiB of RSS while their live tensors peaked at about 490.
Fixing the threshold at :data:`THRESHOLD` gives each such buffer its own mapping, unmapped when
freed, so peak RSS follows the live tensors. Fresh mappings must be faulted in again, which costs
time; torch's ``THP_MEM_ALLOC_ENABLE`` (transparent huge pages for buffers of 2 MiB and more) makes
that fault 2 MiB at a time. Without huge pages the mappings cost a third of the speed (measured),
so the default needs them.

torch reads ``THP_MEM_ALLOC_ENABLE`` once, at its first allocation: :func:`before_torch` must run
before torch is imported (``tuneforge train`` calls it right after validating the config); the
threshold itself can be set any time (:func:`apply`, when training starts on CPU). Neither changes
a value computed: only where buffers live.
"""

from __future__ import annotations

import os
import platform
import sys

#: Buffers of this size or more get their own mapping (a hidden-size activation of a few hundred
#: tokens and up); smaller ones stay in the heap, where reuse is cheap and holes are small.
THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
_HUGE_PAGES = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_available() -> bool:
    """Transparent huge pages can be asked for (the kernel's setting is ``always`` or ``madvise``)."""
    try:
        with open(_HUGE_PAGES, encoding="ascii") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def supported() -> tuple[bool, str]:
    """(can it work here?, why not)."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False, "needs Linux with glibc"
    if not huge_pages_available():
        return False, "needs transparent huge pages, which are off (without them the fresh mappings cost a third of the speed)"
    return True, ""


def wanted(config) -> bool:
    """The config's choice: ``release_cpu_memory`` true or unset (on where it works), false off."""
    return config.get("release_cpu_memory") is not False and supported()[0]


def before_torch(config) -> None:
    """Ask torch for huge pages (must precede ``import torch``); a user's own setting wins."""
    if wanted(config) and "torch" not in sys.modules:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def set_mmap_threshold(nbytes: int) -> bool:
    """glibc's ``mallopt(M_MMAP_THRESHOLD, nbytes)``; True when glibc took it."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))


def apply(ctx) -> str | None:
    """When training runs on CPU and the config allows: fix the threshold. Returns what ``train`` says.

    Only where torch was asked for huge pages before it loaded (:func:`before_torch`, or the user's
    own ``THP_MEM_ALLOC_ENABLE=1``): without them the threshold would cost more speed than it is worth.
    A ``release_cpu_memory: true`` that cannot act says why.
    """
    import torch

    asked = ctx.config.get("release_cpu_memory") is True
    if not ctx.training or ctx.config.get("release_cpu_memory") is False:
        return None
    if torch.cuda.is_available():
        return "release_cpu_memory: true does nothing on a GPU (its tensors are not in the heap)" if asked else None
    can, why = supported()
    if not can:
        return f"release_cpu_memory: true does nothing here: it {why}" if asked else None
    if os.environ.get("THP_MEM_ALLOC_ENABLE") != "1":
        return ("release_cpu_memory: true does nothing here: torch was loaded before `train` could ask it for "
                "huge pages (set THP_MEM_ALLOC_ENABLE=1 before importing torch)") if asked else None
    if not set_mmap_threshold(THRESHOLD):
        return "release_cpu_memory: true does nothing here: glibc refused the mmap threshold" if asked else None
    return (f"freed tensor buffers of {THRESHOLD >> 20} MiB or more go back to the system (huge pages): "
            "lower peak RSS, somewhat slower steps; release_cpu_memory: false keeps the C library's default")
