"""Measure the peak memory of a few real training steps, to check the planner against.

The run is tuneforge's own: the planned loader, quantizer and method (``load_model``), transformers'
Trainer built by ``build_trainer`` with the config's training arguments (gradient checkpointing,
optimizer, batch size), on ``steps`` synthetic rows of exactly ``cutoff_len`` random tokens, every one
labelled (the most an sft or pt row can cost). At least two steps run, so the peak of a step that
already holds the optimizer state is seen as well as the first optimizer step. It is the causal-LM
objective whatever the config's stage: a dpo, kto or rm run (two sequences per row, a reference model,
a value head) is planned by the formulas but not measured here.

What "peak" means, per device:

* GPU: ``torch.cuda.max_memory_allocated()`` over the steps (weights included): the bytes held by
  tensors, without the caching allocator's reserve or the CUDA context.
* CPU, which has no such counter: the same quantity, built from two exact parts. The bytes of every
  tensor the model holds when training starts (parameters, buffers and the quantization constants
  bitsandbytes keeps beside its 4-bit weights), plus the highest point the allocator's running total
  reaches above its starting level during the steps, from the allocation and free events
  ``torch.profiler`` records with ``profile_memory=True`` (every CPU tensor allocation and free goes
  through c10's allocator, which reports them). Counted from tensors rather than process RSS, this
  excludes what RSS adds and the planner does not model: the libraries' code and data, malloc's free
  lists, and the pages of a memory-mapped checkpoint file.
"""

from __future__ import annotations

import gc
import tempfile
from dataclasses import dataclass
from types import SimpleNamespace


@dataclass
class Measurement:
    peak: int  # bytes per device at the peak, weights included
    weights: int  # bytes held by the model when training started
    parameters: int
    trainable: int
    device: str
    steps: int


def model_tensor_bytes(model) -> int:
    """Bytes of the storages behind the model's parameters and buffers (each once), plus the
    quantization state bitsandbytes keeps outside them (4-bit absmax and code, double-quantized too)."""
    import torch

    seen: set[tuple[int, int]] = set()
    total = 0

    def add(tensor) -> None:
        nonlocal total
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()

    for tensor in list(model.parameters()) + list(model.buffers()):
        add(tensor)
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        while state is not None:
            add(getattr(state, "absmax", None))
            add(getattr(state, "code", None))
            state = getattr(state, "state2", None)
    return total


def synthetic_rows(vocab_size: int, rows: int, length: int, seed: int = 0) -> list[dict]:
    """``rows`` examples of ``length`` random tokens, each token a label."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(rows):
        ids = torch.randint(0, vocab_size, (length,), generator=generator)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


class _CpuAllocatorPeak:
    """Highest running total of CPU allocations minus frees between start() and stop()."""

    def start(self) -> None:
        import torch

        gc.collect()  # no collection of earlier garbage inside the window (it would read as a negative)
        self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
        self.profiler.__enter__()

    def stop(self) -> int:
        self.profiler.__exit__(None, None, None)
        events = sorted((e.start_ns(), e.nbytes()) for e in self.profiler.profiler.kineto_results.events()
                        if e.name() == "[memory]" and e.device_type().name == "CPU")
        running = peak = 0
        for _, nbytes in events:
            running += nbytes
            peak = max(peak, running)
        return peak


def measure_training_peak(prepared, steps: int = 2) -> Measurement:
    """Train ``steps`` steps of the prepared config on synthetic rows and return the peak memory."""
    import torch
    import transformers
    from transformers import TrainerCallback, default_data_collator

    from ..train.context import RunContext
    from ..train.hf_trainer import build_trainer, training_arguments
    from ..train.model import load_model
    from .estimate import gradient_checkpointing

    steps = max(int(steps), 2)
    # measure what the estimate plans (train's own choice, auto_gc.py, may differ when the config leaves it open)
    config = prepared.config.with_values(disable_gradient_checkpointing=not gradient_checkpointing(prepared.config))
    transformers.set_seed(int(config.get("seed") or 42))
    ctx = RunContext(config, prepared.plan, prepared.manager, training=True)
    model, _ = load_model(ctx)
    batch = int(config.get("per_device_train_batch_size") or 1)
    rows = synthetic_rows(model.config.vocab_size, batch * steps, int(config.get("cutoff_len") or 2048))
    data = SimpleNamespace(train=rows, eval=None, collator=default_data_collator)
    cuda = torch.cuda.is_available()

    class PeakCallback(TrainerCallback):
        weights = peak = 0

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.weights = model_tensor_bytes(model)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            else:
                self.cpu = _CpuAllocatorPeak()
                self.cpu.start()

        def on_train_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
                self.peak = torch.cuda.max_memory_allocated()
            else:
                self.peak = self.weights + self.cpu.stop()

    callback = PeakCallback()
    with tempfile.TemporaryDirectory(prefix="tuneforge-plan-measure-") as out:
        args = training_arguments(ctx, output_dir=out, max_steps=steps, save_strategy="no", logging_strategy="no",
                                  eval_strategy="no", report_to="none", disable_tqdm=True)
        trainer = build_trainer(ctx, data, args=args, callbacks=[callback])
        trainer.train()
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return Measurement(callback.peak, callback.weights, parameters, trainable, "cuda" if cuda else "cpu", steps)
