"""LLaMA-Factory's speed switches that act through the trainer: ``enable_liger_kernel`` and ``use_unsloth_gc``.

- ``enable_liger_kernel: true``: transformers' own Liger integration (``use_liger_kernel``), which patches
  the model with liger-kernel's Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy).
  Triton needs a CUDA GPU: elsewhere, or without the ``liger-kernel`` package, the run continues
  without it and says why.
- ``use_unsloth_gc: true``: unsloth-style offloaded gradient checkpointing in plain torch. Each
  checkpointed layer keeps only its input, moved to CPU memory (pinned, asynchronously, on a GPU),
  and recomputes its forward in backward. On a GPU this frees the device memory that plain
  checkpointing keeps per layer; on CPU the copy is free and it behaves as plain checkpointing. The
  losses equal the non-offloaded run's (tests/test_speedups.py). It needs gradient checkpointing on.
"""

from __future__ import annotations

from ..ranks import is_main_process


def _say(message: str) -> None:
    if is_main_process():
        print(message, flush=True)


def training_kwargs(ctx, kwargs: dict) -> None:
    config = ctx.config
    if config.get("enable_liger_kernel") and "use_liger_kernel" not in kwargs:
        import importlib.util

        import torch

        if not torch.cuda.is_available():
            _say("warning: enable_liger_kernel: liger-kernel needs a CUDA GPU (Triton kernels); training without it")
        elif importlib.util.find_spec("liger_kernel") is None:
            _say("warning: enable_liger_kernel: the liger-kernel package is not installed (pip install liger-kernel); "
                 "training without it")
        else:
            kwargs["use_liger_kernel"] = True


def offloaded_checkpoint(function, *args, **kwargs):
    """Drop-in for ``torch.utils.checkpoint.checkpoint`` as transformers' layers call it."""
    import functools

    if kwargs:
        function = functools.partial(function, **kwargs)
    return _Offloaded.get().apply(function, *args)


class _Offloaded:
    fn = None

    @classmethod
    def get(cls):
        if cls.fn is None:
            import torch

            class OffloadedCheckpoint(torch.autograd.Function):
                @staticmethod
                def forward(ctx, function, hidden, *args):
                    ctx.function, ctx.device, ctx.args = function, hidden.device, args
                    pin = hidden.device.type == "cuda"
                    saved = hidden.detach().to("cpu", non_blocking=pin) if pin else hidden.detach().clone()
                    ctx.save_for_backward(saved)
                    with torch.no_grad():
                        return function(hidden, *args)

                @staticmethod
                def backward(ctx, *grads):
                    (saved,) = ctx.saved_tensors
                    hidden = saved.to(ctx.device, non_blocking=True).requires_grad_(True)
                    with torch.enable_grad():
                        output = ctx.function(hidden, *ctx.args)
                    outputs = output if isinstance(output, tuple) else (output,)
                    pairs = [(o, g) for o, g in zip(outputs, grads) if torch.is_tensor(o) and o.requires_grad and g is not None]
                    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
                    return (None, hidden.grad) + (None,) * len(ctx.args)

            cls.fn = OffloadedCheckpoint
        return cls.fn


def apply(ctx, trainer) -> None:
    """``use_unsloth_gc``: swap the checkpoint function of every checkpointed layer once training starts."""
    if not ctx.config.get("use_unsloth_gc"):
        return
    if not trainer.args.activation_checkpointing:
        _say("warning: use_unsloth_gc needs gradient checkpointing, which is off for this run "
             "(set gradient_checkpointing: true); training without offloading")
        return
    from transformers import TrainerCallback

    class Offload(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            model = model or trainer.model
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            if hasattr(base, "enable_input_require_grads"):  # the layers' inputs must carry the graph (frozen embeddings)
                base.enable_input_require_grads()
            from transformers.modeling_layers import GradientCheckpointingLayer

            count = 0
            for module in model.modules():
                if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
                    module._gradient_checkpointing_func = offloaded_checkpoint
                    count += 1
            _say(f"use_unsloth_gc: {count} layer(s) checkpoint with their inputs offloaded to CPU memory")

    trainer.add_callback(Offload())
