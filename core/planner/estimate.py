"""The memory formulas: per-device bytes of weights, gradients, optimizer state and activations for a
config on a ModelShape, the peak they add up to, and which setting to change when it does not fit.

All formulas are written out in docs/planner.md. In short, for P parameters, T of them trainable, and
``tokens = micro batch x cutoff_len x sequences per example`` on one device:

* weights: P x bytes of the dtype the model is loaded in (fp32 unless bf16/fp16), trainable ones in
  fp32 (``upcast_trainable_params``); quantized linear weights at bits/8 plus their constants;
* gradients: T x the trainable dtype; optimizer: AdamW keeps two states per trainable parameter;
* activations: per token, every decoder layer keeps ``a(3h + 3q + 2kv + 4i) + 8h`` bytes for backward
  (``a`` the compute dtype's bytes; the two RMSNorm inputs are saved in fp32), or only its input
  (``a h``) with gradient checkpointing plus one layer recomputed; the loss adds ``12 V`` (fp32
  log-probabilities, their gradient and the logits' gradient);
* peak: weights + optimizer + max(gradients, activations + the head's gradient), since backward frees
  the activations as it produces the gradients (both count when gradients accumulate across steps).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..plugin_helpers import checkpoint_bits, checkpoint_quantization, quant_method
from .rules import Rules, rules_for
from .shape import ModelShape

GiB = 1024**3
MiB = 1024**2

#: CUDA context, kernels' workspaces and the caching allocator's slack, kept free when judging a fit.
RUNTIME_RESERVE_FIXED = 512 * MiB
RUNTIME_RESERVE_FRACTION = 0.10


@dataclass
class Component:
    """One line of the plan: bytes on each device and how they were counted."""

    name: str
    device: int
    how: str


@dataclass
class MemoryEstimate:
    parameters: int
    trainable: int
    method: str
    stage: str
    processes: int
    settings: dict[str, Any]
    weights: Component
    gradients: Component
    optimizer: Component
    activations: Component
    #: Peak per device: weights + optimizer + max(gradients, activations + head gradient) (see module doc).
    total: int
    peak_rule: str
    cpu: int  # host memory per process holding what ZeRO offloads
    notes: list[str] = field(default_factory=list)
    budget: int | None = None
    advice: list["Knob"] = field(default_factory=list)
    path_to_fit: list["Knob"] = field(default_factory=list)

    @property
    def components(self) -> list[Component]:
        return [self.weights, self.gradients, self.optimizer, self.activations]

    @property
    def needed(self) -> int:
        """What must be free on the device: the peak plus the runtime's reserve (CUDA context, allocator slack)."""
        return needed_with_reserve(self.total)

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.needed <= self.budget


def needed_with_reserve(total: int) -> int:
    return int(total * (1 + RUNTIME_RESERVE_FRACTION)) + RUNTIME_RESERVE_FIXED


@dataclass
class Knob:
    """A setting to change, what it saves on each device, and the plan with it."""

    label: str
    change: dict[str, Any]
    saving: int
    total: int
    method: str
    cpu: int = 0

    @property
    def fits_in(self) -> int:
        return needed_with_reserve(self.total)


# --- settings read from the config ----------------------------------------------------------------------------


def gradient_checkpointing(config) -> bool:
    """hf_trainer's rule: the Hugging Face names win when set, else on unless disable_gradient_checkpointing."""
    for key in ("activation_checkpointing", "gradient_checkpointing"):
        if config.is_set(key) and config.get(key) is not None:
            return bool(config.get(key))
    return not config.get("disable_gradient_checkpointing")


def compute_dtype(config) -> str:
    if config.get("bf16") or config.get("pure_bf16"):
        return "bf16"
    if config.get("fp16"):
        return "fp16"
    return "fp32"


def optimizer_name(config) -> str:
    """Unset, transformers' default (as LLaMA-Factory runs): fused AdamW, the same two states."""
    return str(config.values.get("optim") or "adamw_torch_fused")


@dataclass(frozen=True)
class DeepSpeed:
    stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False

    @property
    def label(self) -> str:
        if not self.stage and not self.offload_optimizer:
            return "no ZeRO"
        offload = [w for w, on in (("optimizer", self.offload_optimizer), ("parameters", self.offload_params)) if on]
        return f"ZeRO-{self.stage}" + (f", {' and '.join(offload)} offloaded to CPU" if offload else "")


def deepspeed_settings(config) -> tuple[DeepSpeed, list[str]]:
    """ZeRO stage and offload from ``deepspeed`` (a JSON path or a dict); notes for what cannot be read."""
    value = config.get("deepspeed")
    if not value:
        return DeepSpeed(), []
    if isinstance(value, (str, Path)):
        try:
            value = json.loads(Path(value).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return DeepSpeed(), [f"deepspeed: cannot read {config.get('deepspeed')} ({exc}); estimated without ZeRO"]
    zero = value.get("zero_optimization") or {} if isinstance(value, dict) else {}

    def offloaded(key: str) -> bool:
        device = (zero.get(key) or {}).get("device")
        return str(device).lower() in ("cpu", "nvme")

    try:
        stage = int(zero.get("stage", 0))
    except (TypeError, ValueError):  # "auto"
        stage = 0
    return DeepSpeed(stage, offloaded("offload_optimizer"), offloaded("offload_param") and stage == 3), []


def quantization(config, rules: Rules) -> tuple[int | None, str | None]:
    """(bits, quantizer) of the base weights: quantization_bit, or an already quantized checkpoint's own."""
    existing = checkpoint_quantization(config.get("model_name_or_path"))
    if existing is not None:
        return checkpoint_bits(existing), rules.quantizer_name or quant_method(existing)
    bits = config.get("quantization_bit")
    return (int(bits), rules.quantizer_name) if bits is not None else (None, None)


# --- what trains ----------------------------------------------------------------------------------------------


@dataclass
class Trainable:
    """What one optimizer step touches: parameters with gradients and parameters with optimizer state."""

    params: int  # parameters that train over the run
    with_grads: int  # parameters holding a gradient at once
    head: int  # trainable parameters of the output head (their gradient comes first in backward)
    largest: int  # the largest trainable tensor (the optimizer step's scratch is its size)
    notes: list[str] = field(default_factory=list)
    activation_values: float = 0.0  # added to each layer's saved activations per token, in compute-dtype values
    activation_bytes: float = 0.0  # ... and in plain bytes


def trainable_params(shape: ModelShape, config, rules: Rules) -> Trainable:
    """The method's own rule (``MethodSpec.plan_trainable``, or that of its ``base_method``); a method
    without one is counted as training every parameter, and the plan says so."""
    largest = max(shape.param_numels.values(), default=0)
    rule = rules.trainable_rule(config)
    if rule is None:
        notes = [f"method '{rules.method}' is not modelled: every parameter counted as trainable"]
        return Trainable(shape.total_params, shape.total_params, shape.head_params(), largest, notes=notes)
    plan = rule(shape, config)
    return Trainable(plan.params, plan.params if plan.with_grads is None else plan.with_grads, plan.head,
                     largest if plan.largest is None else plan.largest, list(plan.notes),
                     plan.activation_values, plan.activation_bytes)


# --- the estimate ---------------------------------------------------------------------------------------------


def _bytes_of(dtype: str) -> int:
    return 4 if dtype == "fp32" else 2


def _quantized_bytes_per_weight(bits: int, quantizer: str | None, config, rules: Rules) -> tuple[float, str]:
    """Bytes per quantized linear weight, its constants included (the quantizer spec's rule)."""
    spec = rules.quantizer
    if spec is not None and spec.bytes_per_weight is not None:
        return spec.bytes_per_weight(bits, config)
    return bits / 8 + 4 / 64, f"{bits}-bit + 2 x fp16 constants per 64 (approximate for {quantizer})"


def estimate(shape: ModelShape, config, *, method: str | None = None, processes: int = 1,
             stage: str | None = None, manager=None) -> MemoryEstimate:
    """Per-device memory of one training run of ``config`` on ``processes`` devices.

    What depends on the plugins (what trains, quantized bytes, paired rows...) is asked of the specs of
    the method, quantizer and stage the config selects (``manager``: the plugins to ask; default: a
    plugin manager with every installed plugin)."""
    rules = rules_for(config, manager, method=method, stage=stage)
    method, stage = rules.method, rules.stage
    notes: list[str] = []
    dtype = compute_dtype(config)
    a = _bytes_of(dtype)
    pure = bool(config.get("pure_bf16"))
    bits, quantizer = quantization(config, rules)
    ds, ds_notes = deepspeed_settings(config)
    notes += ds_notes
    world = max(int(processes), 1)
    trained = trainable_params(shape, config, rules)
    notes += trained.notes
    total_params = shape.total_params
    keep_dtype = pure or rules.keeps_trainable_dtype
    train_bytes = a if keep_dtype else 4  # trainable parameters after upcast_trainable_params, and AdamW's states
    # DeepSpeed with bf16/fp16 casts the whole model to half precision and keeps an fp32 master copy in its
    # optimizer: the ZeRO paper's 2 + 2 + 12 bytes per trained parameter
    deepspeed_mixed = bool(ds.stage or ds.offload_optimizer) and dtype != "fp32" and not pure
    weight_train_bytes = a if deepspeed_mixed else train_bytes

    # weights -------------------------------------------------------------------------------------------------
    # (count, bytes each, what): LoRA keeps the whole base model and adds its adapters; other methods
    # train part of the model in place, in fp32 once upcast_trainable_params has run.
    adapters = not rules.trains_base_weights
    parts: list[tuple[int, float, str]] = []
    if bits is not None:
        per_weight, what = _quantized_bytes_per_weight(bits, quantizer, config, rules)
        linear = sum(m.numel for m in shape.decoder_linears())
        # prepare_model_for_kbit_training casts the parameters bitsandbytes does not quantize to fp32 (unless pure_bf16)
        rest_bytes = a if pure or not rules.upcasts_unquantized else 4
        parts += [(linear, per_weight, f"linear at {per_weight:.3f} B ({what})"),
                  (total_params - linear, rest_bytes, f"others x {rest_bytes} B")]
    else:
        frozen = total_params if adapters else total_params - trained.params
        parts.append((frozen, a, f"{'frozen ' if trained.params else ''}x {a} B ({dtype})"))
    if adapters or bits is not None:
        parts.append((trained.params, weight_train_bytes, f"adapter x {weight_train_bytes} B"))
    else:
        parts.append((trained.params, weight_train_bytes,
                      f"trainable x {weight_train_bytes} B" + (" (fp32)" if weight_train_bytes != a else f" ({dtype})")))
    if rules.needs_reference(config) and not adapters:
        parts.append((total_params, a, f"reference model x {a} B"))
    parts = [p for p in parts if p[0]]
    weights = int(sum(count * each for count, each, _ in parts))
    how_weights = " + ".join(f"{count:,} {what}" for count, _, what in parts)

    # gradients and optimizer state -------------------------------------------------------------------------------
    grad_bytes = a if deepspeed_mixed else train_bytes
    gradients = trained.with_grads * grad_bytes
    how_grads = f"{trained.with_grads:,} trainable x {grad_bytes} B"
    optimizer, how_optimizer = _optimizer_state(shape, config, rules, trained, train_bytes, notes)
    if deepspeed_mixed and trained.params:
        optimizer += trained.params * 4
        how_optimizer += f" + fp32 master copy ({trained.params:,} x 4 B)"

    # ZeRO shards what its stage says across the processes; offload moves it to host memory
    cpu = 0
    if ds.stage or ds.offload_optimizer:
        if ds.stage >= 1:
            optimizer //= world
        if ds.stage >= 2:
            gradients //= world
        if ds.stage >= 3:
            weights //= world
        if ds.offload_optimizer:
            # the optimizer steps on the CPU: its state and an fp32 copy of the gradients live there, and the
            # device keeps about one layer's gradients in the reduce buckets (DeepSpeed's own estimate)
            cpu += optimizer + gradients * 4 // grad_bytes
            optimizer = 0
            gradients = min(gradients, shape.largest_layer_params() * grad_bytes)
        if ds.offload_params:
            cpu += weights
            layer_bytes = shape.largest_layer_params() * a
            weights = 2 * layer_bytes  # the gathered layer and the one prefetched
        elif ds.stage >= 3:
            weights += 2 * shape.largest_layer_params() * a  # gathered for compute
        shard = f" / {world} processes" if world > 1 else ""
        if ds.stage >= 1 and world > 1:
            how_optimizer += shard
        if ds.stage >= 2 and world > 1:
            how_grads += shard
        if ds.stage >= 3:
            how_weights += (shard if world > 1 else "") + " + 2 gathered layers"
        if ds.offload_optimizer:
            how_optimizer = "offloaded to CPU"
            how_grads = "offloaded to CPU; about one layer in the reduce buckets on the device"
        if ds.offload_params:
            how_weights = "offloaded to CPU; 2 gathered layers on the device"

    # activations -------------------------------------------------------------------------------------------------
    # prepare_model_for_kbit_training casts the embeddings to fp32, so the residual stream, and with it
    # what the layers save, stays fp32 under bf16/fp16 too
    act_dtype = "fp32" if bits is not None and rules.upcasts_unquantized and not pure else dtype
    if act_dtype != dtype:
        notes.append(f"{quantizer} training keeps the embeddings in fp32 (prepare_model_for_kbit_training), so the "
                     "activations are fp32; pure_bf16: true halves them")
    activations, how_act, per_token = _activations(shape, config, rules, act_dtype, trained, notes)
    head_grad = trained.head * grad_bytes // (world if ds.stage >= 2 else 1)
    scratch = trained.largest * 4 if not ds.offload_optimizer else 0  # AdamW's denominator for one tensor
    accumulate = int(config.get("gradient_accumulation_steps") or 1) > 1
    ddp = world > 1 and not ds.stage
    if accumulate or ddp:
        total = weights + optimizer + gradients + activations + (gradients if ddp else 0)
        peak_rule = ("weights + optimizer + gradients + activations"
                     + (" (gradients kept across gradient_accumulation_steps)" if accumulate else "")
                     + (" + DDP's gradient buckets" if ddp else ""))
    else:
        during_backward = activations + head_grad
        at_step = gradients + scratch
        total = weights + optimizer + max(during_backward, at_step)
        peak_rule = ("weights + optimizer + activations + the head's gradient (backward's first moment)"
                     if during_backward >= at_step else "weights + optimizer + gradients (optimizer step)")
    if rules.unplanned:
        notes.append(f"stage '{stage}' is not modelled: estimated as sft ({rules.unplanned} are not counted)")

    settings = {
        "stage": stage, "method": method, "dtype": dtype, "quantization": f"{bits}-bit {quantizer}" if bits else None,
        "cutoff_len": int(config.get("cutoff_len") or 2048), "micro_batch": int(config.get("per_device_train_batch_size") or 1),
        "sequences_per_example": 2 if rules.pairs_rows else 1,
        "gradient_accumulation_steps": int(config.get("gradient_accumulation_steps") or 1),
        "gradient_checkpointing": gradient_checkpointing(config), "optim": optimizer_name(config),
        "processes": world, "deepspeed": ds.label, "activation_bytes_per_token": per_token,
    }
    return MemoryEstimate(
        parameters=total_params, trainable=trained.params, method=method, stage=stage, processes=world,
        settings=settings,
        weights=Component("weights", int(weights), how_weights),
        gradients=Component("gradients", int(gradients), how_grads),
        optimizer=Component("optimizer", int(optimizer), how_optimizer),
        activations=Component("activations", int(activations), how_act),
        total=int(total), peak_rule=peak_rule, cpu=int(cpu), notes=notes,
    )


def _optimizer_state(shape: ModelShape, config, rules: Rules, trained: Trainable, train_bytes: int,
                     notes: list[str]) -> tuple[int, str]:
    """Bytes of optimizer state and how they were counted."""
    optim = optimizer_name(config)
    params = trained.with_grads
    if "8bit" in optim:
        per_param, what = 2, "8-bit AdamW: 2 states x 1 B"
    elif optim.startswith("sgd"):
        per_param, what = 0, "SGD without momentum: no state"
    elif "lion" in optim:
        per_param, what = train_bytes, f"Lion: 1 state x {train_bytes} B"
    elif "adafactor" in optim:
        per_param, what = 0, "Adafactor: factored second moment (rows + columns), not counted"
        notes.append("Adafactor's factored state (rows + columns per matrix) is small and not counted")
    else:
        per_param, what = 2 * train_bytes, f"AdamW: 2 states x {train_bytes} B"
        if not optim.startswith(("adamw", "adam")):
            notes.append(f"optim '{optim}' is not modelled: counted as AdamW")
    rule = rules.optimizer_rule()
    if rule is not None:
        from ..specs import TrainablePlan

        planned = TrainablePlan(trained.params, trained.with_grads, trained.head, trained.largest)
        found = rule(shape, config, planned, per_param, what)
        if found is not None:
            return found
    return params * per_param, f"{what} per trainable param ({params:,})"


def activation_bytes_per_token(shape: ModelShape, dtype: str, *, checkpointing: bool, eager: bool, seq_len: int,
                               method_extra: float = 0.0, head: bool = True) -> tuple[float, dict[str, float]]:
    """Bytes kept per token: (total, parts). See docs/planner.md for where each term comes from."""
    a = _bytes_of(dtype)
    h, q, kv, i = shape.hidden_size, shape.q_dim, shape.kv_dim, shape.intermediate_size
    layer = a * (3 * h + 3 * q + 2 * kv + 4 * i) + 4 * 2 * h + method_extra
    if eager:
        layer += 4 * shape.num_heads * seq_len + a * q  # the fp32 attention probabilities and their matmul input
    # the final norm's and the head's saved inputs, and the loss: fp32 log-probs, their gradient, the logits' gradient
    top = (a + 8) * h + (12 * shape.vocab_size if head else 0)
    parts: dict[str, float] = {}
    if checkpointing:
        # Backward starts at the loss with only the layer inputs kept; the layers are recomputed one at a
        # time after the loss's buffers are freed, so the larger of the two is the peak.
        parts["layer inputs"] = shape.num_layers * a * h
        recompute = layer + a * h  # one layer's activations and the gradient flowing into it
        if top >= recompute:
            parts["head and loss (larger than one recomputed layer)"] = top
        else:
            parts["one layer recomputed (larger than head and loss)"] = recompute
    else:
        parts["layers"] = shape.num_layers * layer
        parts["head and loss"] = top
    return sum(parts.values()), parts


def _activations(shape: ModelShape, config, rules: Rules, dtype: str, trained: Trainable,
                 notes: list[str]) -> tuple[int, str, float]:
    a = _bytes_of(dtype)
    seq = int(config.get("cutoff_len") or 2048)
    batch = int(config.get("per_device_train_batch_size") or 1)
    sequences = 2 if rules.pairs_rows else 1
    tokens = batch * seq * sequences
    method_extra = a * trained.activation_values + trained.activation_bytes
    eager = config.get("flash_attn") == "disabled"
    checkpointing = gradient_checkpointing(config)
    per_token, parts = activation_bytes_per_token(shape, dtype, checkpointing=checkpointing, eager=eager, seq_len=seq,
                                                  method_extra=method_extra, head=rules.lm_loss)
    if shape.model_type in ("qwen3", "qwen3_moe", "gemma3"):
        notes.append(f"{shape.model_type}'s q/k norms keep a few % more activations than counted")
    how = f"{tokens:,} tokens ({batch} x {seq}{' x 2 sequences' if sequences == 2 else ''}) x {per_token:,.0f} B/token: " + \
        ", ".join(f"{name} {value:,.0f}" for name, value in parts.items())
    return int(tokens * per_token), how, per_token


# --- knobs ----------------------------------------------------------------------------------------------------

def _zero(stage: int, optimizer: bool = False, params: bool = False) -> dict:
    """A deepspeed config (as a dict) with this ZeRO stage and offload."""
    zero: dict[str, Any] = {"stage": stage}
    if optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if params:
        zero["offload_param"] = {"device": "cpu"}
    return {"zero_optimization": zero}


def _knobs(config, method: str, processes: int, manager=None) -> list[tuple[str, str, dict, str]]:
    """(kind, label, config changes, method with them) for every setting worth trying from this config.

    The method and quantizer to suggest come from the specs: a method that trains adapters (the default
    one when it does) instead of one that trains the base weights; the configured or default quantizer."""
    out = []
    rules = rules_for(config, manager, method=method)
    ds, _ = deepspeed_settings(config)
    bits, _ = quantization(config, rules)
    instead = rules.adapter_method() if rules.trains_base_weights else None
    adapter = {"finetuning_type": instead.name, **rules.method_flags_off()} if instead is not None else {}
    new_method = instead.name if instead is not None else method
    if adapter:
        out.append(("method", f"{instead.spec.label} instead of {method} (finetuning_type: {instead.name})", adapter,
                    new_method))
    quantizer = config.get("quantization_method") or rules.default_quantizer()
    if (bits is None or bits > 4) and quantizer:
        label = "4-bit base weights (quantization_bit: 4" + (
            f", with {instead.spec.label}: Q{instead.spec.label})" if adapter else ")")
        out.append(("quantization", label, {"quantization_bit": 4, "quantization_method": quantizer, **adapter},
                    new_method))
    if not gradient_checkpointing(config):
        out.append(("checkpointing", "gradient checkpointing on (disable_gradient_checkpointing: false)",
                    {"disable_gradient_checkpointing": False, "activation_checkpointing": None,
                     "gradient_checkpointing": None}, method))
    if compute_dtype(config) == "fp32":
        out.append(("dtype", "bf16 mixed precision (bf16: true)", {"bf16": True}, method))
    if processes > 1 and ds.stage < 3:
        out.append(("zero", f"ZeRO-3 across the {processes} processes (deepspeed: a stage-3 config)",
                    {"deepspeed": _zero(3, ds.offload_optimizer)}, method))
    if not ds.offload_optimizer:
        stage = max(ds.stage, 2)
        out.append(("offload", f"optimizer state offloaded to CPU (ZeRO-{stage} offload_optimizer: cpu)",
                    {"deepspeed": _zero(stage, optimizer=True)}, method))
    if not ds.offload_params:
        out.append(("offload parameters", "parameters and optimizer offloaded to CPU (ZeRO-3 offload_param + "
                    "offload_optimizer: cpu)", {"deepspeed": _zero(3, optimizer=True, params=True)}, method))
    cutoff = int(config.get("cutoff_len") or 2048)
    if cutoff >= 256:
        out.append(("cutoff", f"shorter sequences (cutoff_len: {cutoff // 2})", {"cutoff_len": cutoff // 2}, method))
    batch = int(config.get("per_device_train_batch_size") or 1)
    if batch > 1:
        accumulation = int(config.get("gradient_accumulation_steps") or 1) * batch
        out.append(("batch", f"per_device_train_batch_size: 1 with gradient_accumulation_steps: {accumulation} "
                    "(same effective batch)",
                    {"per_device_train_batch_size": 1, "gradient_accumulation_steps": accumulation}, method))
    return out


#: A knob is worth naming when it saves at least this share of the peak.
MIN_SAVING = 0.02
#: The order the knobs are tried in when looking for a plan that fits: the ones that change the least
#: about the training (its result, then its speed) first, truncating the data last.
LEAST_INTRUSIVE_FIRST = ("checkpointing", "batch", "dtype", "zero", "method", "quantization", "offload",
                         "offload parameters", "cutoff")


def advise(shape: ModelShape, config, current: MemoryEstimate, processes: int,
           manager=None) -> tuple[list[Knob], list[Knob]]:
    """Each knob alone, largest saving first; and, when a budget is exceeded, the knobs that get the run
    under it, tried least intrusive first (a knob is kept when it saves memory)."""

    def options(cfg, method: str, now: MemoryEstimate) -> dict[str, Knob]:
        out = {}
        for kind, label, change, new_method in _knobs(cfg, method, processes, manager):
            changed = estimate(shape, cfg.with_values(**change), method=new_method, processes=processes, stage=now.stage,
                               manager=manager)
            if now.total - changed.total >= MIN_SAVING * now.total:
                out[kind] = Knob(label, change, now.total - changed.total, changed.total, new_method, changed.cpu)
        return out

    alone = sorted(options(config, current.method, current).values(), key=lambda k: -k.saving)
    path: list[Knob] = []
    budget = current.budget
    if budget is None or current.fits:
        return alone, path
    cfg, method, now = config, current.method, current
    for kind in LEAST_INTRUSIVE_FIRST:
        knob = options(cfg, method, now).get(kind)
        while knob is not None:  # a knob may apply again (cutoff_len halves once more)
            path.append(knob)
            cfg, method = cfg.with_values(**knob.change), knob.method
            now = estimate(shape, cfg, method=method, processes=processes, stage=now.stage, manager=manager)
            if needed_with_reserve(now.total) <= budget:
                return alone, path
            knob = options(cfg, method, now).get(kind) if kind == "cutoff" else None
    return alone, path


def plan_memory(shape: ModelShape, config, *, method: str | None = None, processes: int = 1,
                budget: int | None = None, stage: str | None = None, manager=None) -> MemoryEstimate:
    """The estimate with the budget judged and the knobs ranked."""
    result = estimate(shape, config, method=method, processes=processes, stage=stage, manager=manager)
    result.budget = budget
    result.advice, result.path_to_fit = advise(shape, config, result, processes, manager)
    return result


