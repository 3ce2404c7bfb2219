"""`tuneforge env`: what to paste into a bug report."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = (
    "torch", "transformers", "peft", "trl", "datasets", "accelerate", "tokenizers", "pluggy",
    "safetensors", "huggingface-hub",
    # optional extras
    "bitsandbytes", "hqq", "optimum-quanto", "gptqmodel", "optimum", "galore-torch", "apollo-torch", "badam",
    "deepspeed", "vllm", "sglang", "flash-attn", "gradio", "fastapi", "uvicorn", "openai", "jieba", "nltk",
    "rouge-chinese", "tensorboard", "wandb", "mlflow-skinny", "matplotlib",
)


def register(sub, name):
    p = sub.add_parser(name, help="print versions of python, tuneforge, its libraries and the device")
    p.set_defaults(handler=run)


def run(args) -> int:
    from .. import __version__

    print(f"tuneforge: {__version__}")
    print(f"python: {platform.python_version()} ({platform.platform()})")
    for pkg in PACKAGES:
        try:
            version = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            version = "not installed"
        print(f"{pkg}: {version}")
    print(f"device: {_device()}")
    return 0


def _device() -> str:
    try:
        import torch
    except ImportError:
        return "unknown (torch not installed)"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"cuda x{len(names)}: {', '.join(names)} (CUDA {torch.version.cuda})"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    import os

    return f"cpu ({os.cpu_count()} cores)"
