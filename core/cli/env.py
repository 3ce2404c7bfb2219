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
    "rouge-chinese", "tensorboard", "wandb", "mlflow-skinny", "matplotlib", "ray",
)


def register(sub, name):
    p = sub.add_parser(name, help="print versions of python, tuneforge, its libraries (and which are outside the "
                                  "tested range) and the device")
    p.set_defaults(handler=run)


def run(args) -> int:
    from .. import __version__
    from ..versions import SWITCH, disabled, tested_ranges

    tested = tested_ranges()
    print(f"tuneforge: {__version__}")
    print(f"python: {platform.python_version()} ({platform.platform()})")
    names = list(PACKAGES) + [t.package for key, t in tested.items() if key not in {p.lower() for p in PACKAGES}]
    untested = []
    for pkg in names:
        try:
            version = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            version = None
        rng = tested.get(pkg.lower().replace("_", "-"))
        if version is None:
            if pkg in PACKAGES:
                print(f"{pkg}: not installed")
            continue
        note = ""
        if rng is not None and not rng.contains(version):
            note = f"  <- outside the tested range {rng.specifier}"
            untested.append(f"{pkg} {version} (tested: {rng.specifier}{'' if rng.extra is None else f', extra {rng.extra}'})")
        print(f"{pkg}: {version}{note}")
    print(f"device: {_device()}")
    if not tested:
        print("tested ranges: unknown (tuneforge is not installed: pip install -e .)")
    elif untested:
        print(f"outside the tested range: {'; '.join(untested)}")
        print(f"  a required library outside its range stops `train` unless {SWITCH}=1 "
              f"({'set' if disabled() else 'not set'})")
    else:
        print("outside the tested range: none")
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
