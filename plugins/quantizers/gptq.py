"""GPTQ: train LoRA on a GPTQ checkpoint, and quantize a model with calibration data in `tuneforge export`.

Needs gptqmodel 7.6 and optimum 2.3 (``pip install 'tuneforge[gptq]'``, which pins gptqmodel==7.6.0 and
optimum==2.3.0; gptqmodel pins numpy 2.2.x and pulls torchao). auto-gptq is not supported: it has no
transformers 5 release and builds for CUDA only.

* **Loading**: a checkpoint whose config.json has ``quantization_config.quant_method: gptq`` is
  recognised without any key; transformers loads it through gptqmodel (on CPU with its torch kernel) and
  PEFT wraps its quantized linear layers as ``GPTQLoraLinear``.
* **Quantizing**: ``export_quantize(ctx, model_dir, out_dir)`` quantizes a saved full-precision model
  with gptqmodel directly (seconds for a small model; transformers' GPTQConfig path is ~25x slower on
  CPU), reading ``export_quantization_bit``, ``export_quantization_dataset``,
  ``export_quantization_nsamples`` and ``export_quantization_maxlen``, plus ``gptq_group_size`` and
  ``gptq_desc_act``. GPTQ needs calibration data, so it does not quantize on load: ``quantization_bit``
  with ``quantization_method: gptq`` is an error that says to export first.
* **CPU workers**: gptqmodel sizes its CPU thread pool as half the cores, and on a 2-core machine that
  is one worker, below the two its model loader asks for ("Virtual pool 'model_loader:cpu' requests 2
  workers but parent 'cpu' only has 1"). ``gptq_cpu_workers`` (default: the number of usable cores,
  at least 2) is exported as ``GPTQMODEL_CPU_WORKERS`` before gptqmodel is imported; a value already in
  the environment wins.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from tuneforge import ConfigKey, QuantizerSpec, Requirement, hookimpl

from ._common import checkpoint_quantization, device_map, group_bytes_per_weight, quant_method, recognizer
from ._gptqmodel import INSTALL, VERSIONS, set_cpu_workers, unavailable_reason  # noqa: F401

BITS = (2, 3, 4, 8)

KEYS = (
    ConfigKey("gptq_group_size", int, 128, "GPTQ export: weights per quantization group (-1: one group per row)."),
    ConfigKey("gptq_desc_act", bool, False, "GPTQ export: quantize columns in order of activation size (act-order)."),
    ConfigKey("gptq_cpu_workers", int, None,
              "gptqmodel's CPU worker threads (GPTQMODEL_CPU_WORKERS); default: the usable cores, at least 2."),
)


# --- loading a GPTQ checkpoint --------------------------------------------------------------------------------


def load_kwargs(ctx) -> dict:
    set_cpu_workers(ctx.config)
    return device_map(ctx)


def after_load(ctx, model):
    quantization = checkpoint_quantization(ctx.config.model_name_or_path) or {}
    layers = sum("QuantLinear" in type(m).__name__ or hasattr(m, "qweight") for m in model.modules())
    print(f"gptq: {layers} linear layers in {quantization.get('bits', '?')}-bit GPTQ "
          f"(group size {quantization.get('group_size', '?')}; checkpoint already quantized)")
    if not ctx.training:
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def validate(config, plan) -> list[str]:
    problems = []
    if config.get("quantization_bit") is not None and checkpoint_quantization(config.get("model_name_or_path")) is None:
        problems.append(
            "GPTQ needs calibration data and does not quantize on load: quantize the model with `tuneforge export` "
            "(export_quantization_bit, export_quantization_dataset), then train on the exported checkpoint without "
            "quantization_bit; or quantize on load with quantization_method: bitsandbytes or hqq"
        )
    workers = config.get("gptq_cpu_workers")
    if workers is not None and workers < 2:
        problems.append(f"gptq_cpu_workers must be at least 2 (gptqmodel's model loader uses 2 workers), not {workers}")
    return problems


# --- quantizing for export ------------------------------------------------------------------------------------


def calibration_texts(source: str, dataset_dir: str | None = None) -> list[str]:
    """Texts from a local file (.txt lines; .json/.jsonl rows: ``text``, else every string field,
    else the contents of ``messages``/``conversations``), a dataset name from dataset_info.json, or a hub
    dataset id (its ``text`` column)."""
    from tuneforge.errors import TuneforgeError

    path = Path(source)
    if not path.is_file() and dataset_dir:
        info = Path(dataset_dir) / "dataset_info.json"
        if info.is_file():
            entry = json.loads(info.read_text(encoding="utf-8")).get(source)
            if isinstance(entry, dict) and entry.get("file_name"):
                path = Path(dataset_dir) / entry["file_name"]
    if path.is_file():
        if path.suffix == ".txt":
            return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        text = path.read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else json.loads(text)
        texts = [_row_text(row) for row in (rows if isinstance(rows, list) else [rows])]
        texts = [t for t in texts if t]
        if not texts:
            raise TuneforgeError(f"export_quantization_dataset: no text found in {path}")
        return texts
    if os.path.exists(source):
        raise TuneforgeError(f"export_quantization_dataset: {source} is not a .txt, .json or .jsonl file")
    try:
        from datasets import load_dataset

        data = load_dataset(source, split="train")
    except Exception as exc:
        raise TuneforgeError(f"export_quantization_dataset: {source} is neither a local file, a dataset in "
                             f"dataset_info.json, nor a loadable hub dataset ({type(exc).__name__}: {exc})") from None
    column = "text" if "text" in data.column_names else data.column_names[0]
    return [str(t) for t in data[column] if t]


def _row_text(row) -> str:
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        return ""
    if isinstance(row.get("text"), str):
        return row["text"]
    for key in ("messages", "conversations"):
        if isinstance(row.get(key), list):
            return "\n".join(str(m.get("content", m.get("value", ""))) for m in row[key] if isinstance(m, dict))
    return "\n".join(v for v in row.values() if isinstance(v, str) and v)


def calibration_samples(texts: list[str], tokenizer, nsamples: int, maxlen: int, seed: int = 42) -> list[dict]:
    """``nsamples`` windows of ``maxlen`` tokens from the texts, shuffled with ``seed`` and joined with EOS.

    Short rows (demo data) are packed together instead of being skipped, so every sample is full length;
    with too little text there are fewer samples, and the run says so.
    """
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    for i in order:
        stream += tokenizer(texts[i], add_special_tokens=False)["input_ids"] + eos
        if len(stream) >= nsamples * maxlen:
            break
    count = min(nsamples, max(1, len(stream) // maxlen))
    if count < nsamples:
        print(f"gptq: the calibration data holds {len(stream)} tokens: {count} sample(s) of up to {maxlen} tokens, "
              f"not export_quantization_nsamples={nsamples}")
    samples = []
    for k in range(count):
        ids = stream[k * maxlen:(k + 1) * maxlen]
        samples.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    return samples


def export_quantize(ctx, model_dir: str, out_dir: str) -> None:
    """Quantize the full-precision model in ``model_dir`` to GPTQ and write it, with its tokenizer, to ``out_dir``."""
    from tuneforge.errors import TuneforgeError

    config = ctx.config
    bits = config.export_quantization_bit
    if bits not in BITS:
        raise TuneforgeError(f"export_quantization_bit: gptq supports {', '.join(map(str, BITS))} bits, not {bits}")
    if not config.export_quantization_dataset:
        raise TuneforgeError("export_quantization_bit needs calibration data: set export_quantization_dataset "
                             "(a .txt/.json/.jsonl file, a dataset name from dataset_info.json, or a hub dataset)")
    set_cpu_workers(config)
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = calibration_texts(str(config.export_quantization_dataset), config.get("dataset_dir"))
    samples = calibration_samples(texts, tokenizer, int(config.export_quantization_nsamples),
                                  int(config.export_quantization_maxlen), seed=int(config.get("seed") or 42))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    quantize_config = QuantizeConfig(bits=bits, group_size=config.gptq_group_size, desc_act=config.gptq_desc_act)
    print(f"gptq: quantizing {model_dir} to {bits}-bit on {device} with {len(samples)} calibration sample(s) "
          f"of up to {config.export_quantization_maxlen} tokens")
    model = GPTQModel.load(model_dir, quantize_config, device=device)
    model.quantize(samples, batch_size=1)
    model.save(out_dir)
    tokenizer.save_pretrained(out_dir)
    written = checkpoint_quantization(out_dir)
    if written is None or quant_method(written) != "gptq":
        raise TuneforgeError(f"gptq: {out_dir}/config.json has no GPTQ quantization_config after saving")


@hookimpl
def tuneforge_quantizers():
    return [
        QuantizerSpec(
            name="gptq",
            description=("GPTQ: LoRA on a GPTQ checkpoint (recognised from its config.json), and GPTQ quantization with "
                         "calibration data in `tuneforge export` (export_quantization_*). Needs gptqmodel 7.6.0 and "
                         f"optimum 2.3.0: {INSTALL}."),
            keys=KEYS,
            requires=(Requirement("gptqmodel", INSTALL, "7.6.0"), Requirement("optimum.gptq", INSTALL, "2.3.0")),
            unavailable_reason=unavailable_reason,
            bits=BITS,
            load_kwargs=load_kwargs,
            after_load=after_load,
            recognizes=recognizer("gptq"),
            bytes_per_weight=group_bytes_per_weight("gptq", default_group=128),
            export_quantize=export_quantize,
            validate=validate,
        )
    ]
