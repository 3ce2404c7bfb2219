"""Third-party messages that a newcomer reads as errors but that say nothing about their run, silenced
where they are raised (one exact message each, never a whole logger or warning category):

- bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community: No module named
  'kernels'" on import on CPUs with AVX512-BF16 when the optional `kernels` package is absent; its
  own CPU kernel then runs, so nothing is missing. (Any other failure to load it still shows.)
- peft reads ``model.is_gradient_checkpointing`` when it wraps a model, which transformers 5 answers
  with a FutureWarning about its own rename (to ``is_activation_checkpointing``).
"""

from __future__ import annotations

import logging
import warnings

BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNELS_MISSING = "Failed to load CPU gemm_4bit_forward"
GC_RENAME = r"`is_gradient_checkpointing` is deprecated"


class _KernelsMissing(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(BNB_KERNELS_MISSING):
            return True
        return "No module named 'kernels'" not in record.getMessage()


def silence_known_noise() -> None:
    """Install the filters (idempotent; cheap: imports nothing)."""
    logger = logging.getLogger(BNB_LOGGER)
    if not any(isinstance(f, _KernelsMissing) for f in logger.filters):
        logger.addFilter(_KernelsMissing())
    warnings.filterwarnings("ignore", message=GC_RENAME, category=FutureWarning)
