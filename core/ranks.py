"""Which process this is when torchrun, `accelerate launch` or deepspeed starts several.

Read from the launcher's environment variables, so it works before torch.distributed is set up
(data preprocessing, model loading) and without importing torch. One process alone is rank 0.
"""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 of all: writes logs, plots, the manifest and the final outputs, and prints the summary."""
    return rank() == 0


def is_local_main_process() -> bool:
    """Rank 0 of this node: builds the node's data cache while the others wait."""
    return local_rank() == 0
