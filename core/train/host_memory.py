"""Peak RSS of training on CPU: the forward's buffers go back to the system when freed.

On CPU, tensors live in the C library's heap. glibc's malloc raises its mmap threshold every time
it frees a large mapped block, so after the first steps every activation buffer (one to tens of MiB)
comes from the main heap. A forward pass allocates the activations kept for backward interleaved
with short-lived temporaries; the temporaries' holes are then reused by buffers of other sizes or
not at all, and the heap's high-water mark ends far above what is live. Measured on the 27M small
model (LoRA, four alpaca rows a step): the steps added 758 MiB of RSS while their live tensors peaked
at about 490.

So while the model runs forward, buffers of :data:`FORWARD_THRESHOLD` or more get their own mapping
(glibc's mmap threshold, fixed), unmapped the moment backward frees them; everything else (backward's
gradients, the optimizer step: short-lived, freed roughly in the order made) stays in the heap, with
the threshold fixed at :data:`OTHER_THRESHOLD` so glibc no longer moves it. Fresh mappings must be
faulted in, which costs time; torch's ``THP_MEM_ALLOC_ENABLE`` (transparent huge pages for buffers of
2 MiB and more) faults them 2 MiB at a time. Measured, same run (single runs): every buffer of 1 MiB
or more mapped, 467 tokens/s at 969-1011 MiB peak; only the forward's, 515-523 at 1014-1018; the heap alone,
568 at 1233; without huge pages the mappings cost a third of the speed, so the default needs them.

torch reads ``THP_MEM_ALLOC_ENABLE`` once, at its first allocation: :func:`before_torch` must run
before torch is imported (``tuneforge train`` calls it right after validating the config); the
thresholds can be set any time (:func:`apply`, once the model is loaded). Neither changes a value
computed: only where buffers live.
"""

from __future__ import annotations

import functools
import os
import platform
import sys

#: In a forward, buffers of this size or more get their own mapping (a hidden-size activation of a few
#: hundred tokens and up); smaller ones stay in the heap, where reuse is cheap and holes are small.
FORWARD_THRESHOLD = 1 << 20
#: Outside a forward: glibc's own ceiling for its moving threshold (larger buffers are mapped anyway).
OTHER_THRESHOLD = 32 << 20
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


@functools.lru_cache(maxsize=1)
def _libc():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def set_mmap_threshold(nbytes: int) -> bool:
    """glibc's ``mallopt(M_MMAP_THRESHOLD, nbytes)``; True when glibc took it."""
    libc = _libc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, int(nbytes)))


def _forward_begins(module, args) -> None:
    set_mmap_threshold(FORWARD_THRESHOLD)


def _forward_ends(module, args, output) -> None:
    set_mmap_threshold(OTHER_THRESHOLD)


def apply(ctx) -> str | None:
    """When ``ctx.model`` trains on CPU and the config allows: the thresholds, switched around its
    forward. Returns what ``train`` says.

    Only where torch was asked for huge pages before it loaded (:func:`before_torch`, or the user's
    own ``THP_MEM_ALLOC_ENABLE=1``): without them the mappings would cost more speed than they save.
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
    if not set_mmap_threshold(OTHER_THRESHOLD):
        return "release_cpu_memory: true does nothing here: glibc refused the mmap threshold" if asked else None
    ctx.model.register_forward_pre_hook(_forward_begins)
    ctx.model.register_forward_hook(_forward_ends)
    return (f"the forward's tensor buffers of {FORWARD_THRESHOLD >> 20} MiB or more go back to the system when "
            "freed (huge pages): lower peak RSS, somewhat slower steps; release_cpu_memory: false keeps the "
            "C library's default")
