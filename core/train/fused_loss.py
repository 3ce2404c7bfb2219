"""A chunked linear + cross-entropy loss for pt/sft: the full logits of a large vocabulary never exist.

A causal LM's plain loss builds logits of shape tokens x vocabulary in fp32 (Llama-3: 128,256 columns),
then their log-softmax and, in backward, their gradient: for a small model this is most of a step's
memory and much of its compute. Here the language-model head and the cross-entropy run together, a
chunk of rows at a time, and only over rows that have a target (SFT prompts and padding have none,
so they cost nothing). The forward pass also computes the gradients with respect to the hidden
states and the head's weight (Liger's fused-linear-cross-entropy scheme, in plain torch so it runs
on CPU); backward only scales them. The result is the plain loss to float rounding
(tests/test_fused_loss.py: 1e-5, per step, LoRA and full).

How it plugs into a transformers model without touching its code: while the model runs with
``labels`` in training mode (with gradients on), its ``lm_head`` hands the hidden states through
unchanged and the model's ``loss_function`` (a settable attribute in transformers) receives them in
place of logits and computes the loss with the head's weight; the output's ``logits`` are then None. Without labels
or in eval mode the model is untouched.

Off (with the reason said) for models that change logits between the head and the loss (softcapping,
logit scaling), a head that is not a plain ``nn.Linear`` (LoRA on the head, quantized), label
smoothing, and sharded weights (FSDP, DeepSpeed ZeRO-3).
"""

from __future__ import annotations

from ..errors import ConfigError, Problem
from ..ranks import is_main_process

IGNORE_INDEX = -100
#: Most rows per chunk (small vocabularies).
CHUNK_ROWS = 1024
#: Memory of one chunk's fp32 logits: the rows per chunk follow from the vocabulary (128k columns: 130
#: rows, 64 MiB; the chunk's softmax and its gradient reuse that buffer, logsumexp needs one more like it).
#: Larger chunks gain no speed on CPU (each is a large matrix product already) and cost memory: at 1024
#: rows a 128k vocabulary took 512 MiB per buffer, most of a small model's step.
CHUNK_BYTES = 64 << 20
#: Below this vocabulary the logits are small and the plain loss is as good (bench/compare.py, CPU:
#: 2,048 tokens 1.01x the plain loss's speed; 8,192 tokens 1.16x, a smaller peak, by skipping the
#: head on prompt rows; every real checkpoint's vocabulary is far above either).
MIN_VOCAB = 8_192
_LOGIT_CHANGERS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def chunk_rows_for(vocab: int) -> int:
    """Rows of logits per chunk for a ``vocab``-column head: :data:`CHUNK_BYTES` of fp32, within 16..CHUNK_ROWS."""
    return max(16, min(CHUNK_ROWS, CHUNK_BYTES // (4 * max(1, vocab))))


def linear_cross_entropy(hidden, weight, targets, bias=None, divisor=None, chunk_rows: int | None = None):
    """Sum of cross-entropy(hidden @ weight.T + bias, targets) over targets != -100, divided by ``divisor``
    (the count of such targets when None), without materialising more than ``chunk_rows`` rows of logits
    (default: :func:`chunk_rows_for` the vocabulary).

    ``hidden``: (N, H); ``weight``: (V, H); ``targets``: (N,).
    """
    import torch

    if chunk_rows is None:
        chunk_rows = chunk_rows_for(weight.shape[0])
    if divisor is None:
        divisor = (targets != IGNORE_INDEX).sum()
    divisor = torch.as_tensor(divisor, device=hidden.device, dtype=torch.float32)
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, divisor, chunk_rows)


def _function():
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, divisor, chunk_rows):
            rows = (targets != IGNORE_INDEX).nonzero().squeeze(-1)
            want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
            want_b = bias is not None and ctx.needs_input_grad[2]
            grad_h = torch.zeros_like(hidden) if want_h else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
            grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if want_b else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            scale = 1.0 / divisor.clamp(min=1) if divisor.numel() else 1.0
            for start in range(0, rows.numel(), chunk_rows):
                index = rows[start:start + chunk_rows]
                h = hidden.index_select(0, index)
                logits = (h @ weight.t()).float()
                if bias is not None:
                    logits = logits + bias.float()
                t = targets.index_select(0, index)
                lse = torch.logsumexp(logits, dim=-1)
                total = total + (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                if want_h or want_w or want_b:
                    # d(sum CE)/d(logits) = softmax - one_hot, computed in place over the chunk's logits
                    grad = logits.sub_(lse[:, None]).exp_()
                    grad[torch.arange(t.numel(), device=t.device), t] -= 1
                    grad.mul_(scale)  # in place: no second chunk-sized buffer
                    if want_h:
                        grad_h.index_copy_(0, index, (grad.to(weight.dtype) @ weight).to(hidden.dtype))
                    if want_w:
                        grad_w.addmm_(grad.t(), h.float())
                    if want_b:
                        grad_b += grad.sum(0)
            ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in (grad_h, grad_w, grad_b)))
            ctx.has = (want_h, want_w, want_b)
            ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
            return total * scale

        @staticmethod
        def backward(ctx, grad_output):
            grad_h, grad_w, grad_b = ctx.saved_tensors
            want_h, want_w, want_b = ctx.has
            return (grad_h * grad_output.to(grad_h.dtype) if want_h else None,
                    (grad_w * grad_output).to(ctx.dtypes[0]) if want_w else None,
                    (grad_b * grad_output).to(ctx.dtypes[1]) if want_b else None,
                    None, None, None)

    return LinearCrossEntropy


class _Lazy:
    fn = None

    def apply(self, *args):
        if _Lazy.fn is None:
            _Lazy.fn = _function()
        return _Lazy.fn.apply(*args)


_LinearCrossEntropy = _Lazy()


# --- plugging into a transformers causal LM --------------------------------------------------------------------


def base_model(model):
    """The transformers model inside an adapter wrapper (PEFT's get_base_model), or the model itself."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def model_problem(model) -> str | None:
    """Why the fused loss cannot replace ``model``'s plain loss exactly, or None."""
    import torch

    base = base_model(model)
    config = getattr(base, "config", None)
    head = getattr(base, "lm_head", None)
    if config is None or head is None or not hasattr(base, "loss_function"):
        return f"{type(base).__name__} has no lm_head and loss_function to fuse"
    if type(head) is not torch.nn.Linear:
        return f"its lm_head is a {type(head).__name__}, not a plain Linear (LoRA or quantization on the head)"
    changer = next((k for k in _LOGIT_CHANGERS if getattr(config, k, None) not in (None, 1, 1.0)), None)
    if changer is not None:
        return f"the model changes its logits before the loss ({changer})"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder models are not causal language models"
    return None


def install(model) -> None:
    """Make ``model`` compute its training loss with :func:`linear_cross_entropy`.

    The head keeps its place and name (checkpoints are unchanged): only its instance ``forward`` and the
    model's ``forward`` and ``loss_function`` are wrapped. ``forward``, not a hook: PEFT calls the base
    model's ``forward`` directly, which bypasses module hooks.
    """
    import functools

    import torch

    base = base_model(model)
    head = base.lm_head
    state = {"active": False}
    linear_forward = head.forward

    def head_forward(hidden):
        return hidden if state["active"] else linear_forward(hidden)

    plain_loss = base.loss_function

    def loss_function(logits, labels, vocab_size=None, num_items_in_batch=None, ignore_index=IGNORE_INDEX,
                      shift_labels=None, **kwargs):
        if not state["active"]:
            return plain_loss(logits, labels, vocab_size, num_items_in_batch=num_items_in_batch,
                              ignore_index=ignore_index, shift_labels=shift_labels, **kwargs)
        if shift_labels is None:
            labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)
            shift_labels = labels[..., 1:]
        hidden = logits.reshape(-1, logits.shape[-1])
        targets = shift_labels.reshape(-1).to(hidden.device)
        if ignore_index != IGNORE_INDEX:
            targets = targets.masked_fill(targets == ignore_index, IGNORE_INDEX)
        return linear_cross_entropy(hidden, head.weight, targets, head.bias, divisor=num_items_in_batch)

    plain_forward = base.forward

    @functools.wraps(plain_forward)
    def forward(*args, **kwargs):
        if not (base.training and kwargs.get("labels") is not None and torch.is_grad_enabled()):
            return plain_forward(*args, **kwargs)
        state["active"] = True
        try:
            output = plain_forward(*args, **kwargs)
        finally:
            state["active"] = False
        if hasattr(output, "logits"):
            output.logits = None  # they were hidden states; nothing in training reads them
        return output

    head.forward = head_forward
    base.loss_function = loss_function
    base.forward = forward
    base._tuneforge_fused_loss = True


def decide(ctx, model, collator, args) -> tuple[bool, str]:
    from ..data.collator import PadCollator

    config = ctx.config
    wanted = config.get("fused_loss")
    if wanted is False:
        return False, "fused_loss: false"
    if type(collator) is not PadCollator:
        return False, "this stage computes its own loss"
    vocab = getattr(getattr(base_model(model), "config", None), "vocab_size", 0) or 0
    why_not = model_problem(model)
    if why_not is None and args.label_smoothing_factor:
        why_not = "label smoothing needs the logits"
    if why_not is None and (args.fsdp or config.get("deepspeed")):
        why_not = "the head's weight is sharded (FSDP/DeepSpeed)"
    if why_not is not None:
        if wanted:
            raise ConfigError([Problem("fused_loss", f"true cannot be exact here: {why_not}; remove fused_loss "
                                       "or set it to false", config.where("fused_loss"))])
        return False, why_not
    if not wanted and vocab < MIN_VOCAB:
        return False, f"a {vocab:,}-token vocabulary has small logits"
    return True, f"{vocab:,}-token vocabulary: logits computed {chunk_rows_for(vocab)} target rows at a time, never in full"


def apply(ctx, trainer, model, collator) -> None:
    if getattr(base_model(model), "_tuneforge_fused_loss", False):
        return
    on, why = decide(ctx, model, collator, trainer.args)
    if on:
        install(model)
    if is_main_process() and type(collator).__name__ == "PadCollator":
        print(f"fused linear + cross-entropy loss: {'on' if on else 'off'} ({why})", flush=True)
