"""Helpers the built-in method plugins share. Not a plugin itself (it registers nothing) and light to
import: no torch here, because `tuneforge check` runs the validators below."""

from __future__ import annotations

import re

from tuneforge import ConfigKey, TrainablePlan
from tuneforge.plugin_helpers import ENCODER_PARTS, PROJECTOR_PARTS, split_names as names, world_size

#: Keys that only mean something for LoRA-family methods, with LLaMA-Factory's error for each.
LORA_ONLY = ("loraplus_lr_ratio", "use_dora", "use_rslora", "pissa_init")

#: Freeze tuning's keys: declared here once, by freeze and by the optimizer methods that train freeze
#: tuning's layers (GaLore, APOLLO with finetuning_type: freeze).
FREEZE_KEYS = (
    ConfigKey("freeze_trainable_layers", int, 2,
              "Number of trainable decoder layers: positive = the last n, negative = the first n."),
    ConfigKey("freeze_trainable_modules", (str, list), "all",
              "Module names inside the trainable layers that train (comma list), or 'all'."),
    ConfigKey("freeze_extra_modules", (str, list), None,
              "Modules outside the decoder layers that also train (e.g. embed_tokens,lm_head)."),
    ConfigKey("use_llama_pro", bool, False,
              "LLaMA Pro (freeze tuning): train the freeze_trainable_layers blocks an expansion added, the last of "
              "every num_layers / freeze_trainable_layers layers."),
)

#: A parameter inside a decoder layer: (layer prefix, layer index, the rest of the name).
LAYER = re.compile(r"^(.*?\.layers\.(\d+))\.(.+)$")


def trainable_layer_ids(num_layers: int, n: int) -> list[int]:
    """Freeze tuning's layers: the last ``n`` (positive) or the first ``-n`` (negative)."""
    if n > 0:
        return list(range(max(num_layers - n, 0), num_layers))
    return list(range(min(-n, num_layers)))


def llama_pro_layer_ids(num_layers: int, n: int) -> list[int]:
    """LLaMA Pro (use_llama_pro): the n blocks its expansion added, the last of every num_layers/n layers."""
    from tuneforge.errors import TuneforgeError

    if n <= 0 or num_layers % n:
        raise TuneforgeError(f"use_llama_pro: the model has {num_layers} layers, which freeze_trainable_layers={n} "
                             "(the number of added blocks) must divide; set it to the number of blocks the expansion added")
    stride = num_layers // n
    return list(range(stride - 1, num_layers, stride))


def contains(path: str, name: str) -> bool:
    """Whether dotted ``name`` is a run of whole components of dotted ``path``."""
    return f".{name}." in f".{path}."


def freeze_selector(config, num_layers: int):
    """Freeze tuning's rule as ``trains(parameter_name) -> bool``: the same for the model and the planner."""
    n = int(config.get("freeze_trainable_layers") or 2)
    layers = set(llama_pro_layer_ids(num_layers, n) if config.get("use_llama_pro") else trainable_layer_ids(num_layers, n))
    modules = names(config.get("freeze_trainable_modules")) or ["all"]
    extra = names(config.get("freeze_extra_modules"))

    def trains(name: str) -> bool:
        if _vision_side(name):  # a VLM's encoder layers are not the decoder layers counted here
            return False
        found = LAYER.match(name)
        if found:
            return int(found.group(2)) in layers and (modules == ["all"] or any(contains(found.group(3), m) for m in modules))
        return any(contains(name, m) for m in extra)

    return trains


def freeze_problems(config) -> list[str]:
    if config.freeze_trainable_layers == 0:
        return ["freeze_trainable_layers must not be 0 (positive = last n layers, negative = first n)"]
    return []


# --- the planner's rules (tuneforge plan) ----------------------------------------------------------------------


def plan_full(shape, config) -> TrainablePlan:
    """Every parameter trains; the head's gradient comes first in backward."""
    return TrainablePlan(shape.total_params, head=shape.head_params())


def plan_freeze(shape, config) -> TrainablePlan:
    """freeze tuning's rule applied to the parameter names."""
    trains = freeze_selector(config, shape.num_layers)
    params = sum(numel for name, numel in shape.param_numels.items() if trains(name))
    head_trains = shape.output_head.split(".")[-1] in names(config.get("freeze_extra_modules"))
    return TrainablePlan(params, head=shape.head_params() if head_trains else 0)


def projected_state(shape, config, prefix: str, label: str, trainable: TrainablePlan, per_param: int, optimizer: str,
                    rank: int) -> tuple[int, str]:
    """GaLore's and APOLLO's optimizer state: two rank-r moments and a projector per targeted linear,
    the ``optim``'s own state on every other trainable parameter."""
    targets = names(config.get(f"{prefix}_target")) or ["all"]
    linears = shape.decoder_linears()
    if targets != ["all"]:
        linears = [m for m in linears if any(f".{t}." in f".{m.name}." for t in targets)]
    projected = sum(m.numel for m in linears)
    low_rank = sum(2 * rank * max(m.in_features, m.out_features) + rank * min(m.in_features, m.out_features)
                   for m in linears)
    params = trainable.with_grads if trainable.with_grads is not None else trainable.params
    rest = max(params - projected, 0)
    return rest * per_param + low_rank * 4, (f"{label}: 2 x rank {rank} x max(in, out) moments + rank x min(in, out) "
                                            f"projector per targeted linear, {optimizer.split(':')[0]} on the other {rest:,}")


def lora_only_problems(config, method: str) -> list[str]:
    """LoRA-only keys set on a method that is not LoRA: an error, as in LLaMA-Factory."""
    out = []
    for key in LORA_ONLY:
        value = config.get(key)
        if value not in (None, False):
            what = "LoRA+ (loraplus_lr_ratio)" if key == "loraplus_lr_ratio" else key
            out.append(f"{what} needs a LoRA method (finetuning_type: lora, dora, rslora or pissa), not '{method}'")
    return out


def base_tuning(config, method: str | None = None) -> str:
    """What an optimizer-level method trains: 'full' (default) or 'freeze' (``finetuning_type: freeze``)."""
    chosen = config.get("finetuning_type") if config.is_set("finetuning_type") else None
    return "freeze" if chosen == "freeze" else "full"


def optimizer_method_problems(config, plan, method: str) -> list[str]:
    """How GaLore, APOLLO and BAdam compose with finetuning_type. (Two methods selected at once, by two
    flags or a flag and another method's finetuning_type, is found by the core from the specs.)"""
    out = []
    flag = plan.method.spec.flag
    if config.is_set("finetuning_type"):
        chosen = config.get("finetuning_type")
        if chosen not in ("full", "freeze", method):
            out.append(
                f"{method} is an optimizer for full or freeze tuning and cannot be used with finetuning_type: {chosen} "
                f"(set finetuning_type: full or freeze, or drop {flag})"
            )
    out += lora_only_problems(config, method)
    return out


def full_or_freeze_optimizer_problems(config, plan, method: str) -> list[str]:
    """An optimizer method over full or freeze tuning (Muon, Adam-mini): how it composes with
    finetuning_type, and freeze tuning's own rules when it trains freeze tuning's layers."""
    problems = optimizer_method_problems(config, plan, method)
    if base_tuning(config) == "freeze":
        problems += freeze_problems(config)
    return problems


def layerwise_problems(config, method: str, key: str) -> list[str]:
    """Layer-wise optimizers step inside backward: no accumulation, one process."""
    if not config.get(key):
        return []
    out = []
    accumulation = config.get("gradient_accumulation_steps") or 1
    if accumulation > 1:
        out.append(f"{key} steps each layer during backward and cannot accumulate gradients "
                   f"(gradient_accumulation_steps is {accumulation}; set it to 1 or drop {key})")
    processes = world_size(config)
    if processes > 1:
        out.append(f"{key} does not support distributed training ({processes} processes from WORLD_SIZE/NPROC_PER_NODE/ray_num_workers)")
    return out


def projection_problems(config, plan, prefix: str, label: str, optims) -> list[str]:
    """Check-time rules GaLore and APOLLO share (rank, update interval, optim, DeepSpeed, layer-wise)."""
    problems = optimizer_method_problems(config, plan, prefix)
    if base_tuning(config, prefix) == "freeze":
        problems += freeze_problems(config)
    if config.get(f"{prefix}_rank") is not None and config.get(f"{prefix}_rank") <= 0:
        problems.append(f"{prefix}_rank must be positive")
    interval = config.get(f"{prefix}_update_interval")
    if interval is not None and interval <= 0:
        problems.append(f"{prefix}_update_interval must be a positive number of steps")
    optim = config.get("optim")
    if optim not in optims:
        problems.append(f"{label} supports optim {', '.join(optims)}; not '{optim}'")
    if config.get("deepspeed"):
        problems.append(f"{label} cannot be used with DeepSpeed (its optimizer state is not partitioned); drop deepspeed")
    problems += layerwise_problems(config, prefix, f"{prefix}_layerwise")
    return problems


# --- PEFT's module targeting, shared by the PEFT adapter methods (LoRA family, OFT) ----------------------------


def linear_module_names(model) -> list[str]:
    """Leaf names of every linear layer except the output head: what lora_target: all means.

    Quantized layers (HQQLinear, GPTQ's QuantLinear) are not nn.Linear subclasses, so a class
    name containing "Linear" (and not "Embedding") counts too.
    """
    import torch

    output = model.get_output_embeddings()
    found = set()
    for full_name, module in model.named_modules():
        kind = type(module).__name__
        linear = isinstance(module, torch.nn.Linear) or ("Linear" in kind and "Embedding" not in kind)
        if linear and module is not output and full_name:
            found.add(full_name.split(".")[-1])
    return sorted(found)


def matches_target(module_names: list[str], target: str) -> bool:
    """PEFT's rule for a list of targets: the module name is the target or ends with '.target'."""
    return any(n == target or n.endswith(f".{target}") for n in module_names)


#: Module-path parts of a vision-language model's vision side (tower and projector), as in
#: LLaMA-Factory: LoRA and OFT never go there unless asked (a lora_target naming such a module).
VISION_PARTS = ENCODER_PARTS + PROJECTOR_PARTS


def _vision_side(name: str) -> bool:
    return any(part in VISION_PARTS for part in name.split("."))


def language_linear_names(model) -> list[str] | None:
    """Leaf names of the linear layers outside the vision side; None for a text-only model."""
    import torch

    names = [n for n, _ in model.named_modules() if n]
    if not any(_vision_side(n) for n in names):
        return None
    output = model.get_output_embeddings()
    found = set()
    for full_name, module in model.named_modules():
        kind = type(module).__name__
        linear = isinstance(module, torch.nn.Linear) or ("Linear" in kind and "Embedding" not in kind)
        if linear and module is not output and full_name and not _vision_side(full_name):
            found.add(full_name.split(".")[-1])
    return sorted(found)


def language_only_targets(targets: list[str]) -> str:
    """A PEFT target regex (full match on the module path) for ``targets`` outside the vision side."""
    import re

    sides = "|".join(VISION_PARTS)
    leaves = "|".join(re.escape(t) for t in targets)
    return rf"^(?!(?:.*\.)?(?:{sides})\.).*\.(?:{leaves})$"
