"""LoRA through PEFT, with LLaMA-Factory's keys, and its variants as names of their own.

``finetuning_type: lora`` with ``use_dora`` / ``use_rslora`` / ``pissa_init`` is LLaMA-Factory's way;
``finetuning_type: dora``, ``rslora`` and ``pissa`` are the same code with that flag implied. LoRA+
(``loraplus_lr_ratio``) is an optimizer with per-group learning rates, built by ``create_optimizer``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path

from tuneforge import AdapterSpec, ConfigKey, MethodSpec, TrainablePlan, hookimpl
from tuneforge.plugin_helpers import quantized_by

from ._common import language_linear_names, language_only_targets, linear_module_names, matches_target, names

KEYS = (
    ConfigKey("lora_rank", int, 8, "Rank of the LoRA matrices."),
    ConfigKey("lora_alpha", (int, float), None, "LoRA scaling numerator; default 2 x lora_rank.", min=0, min_open=True),
    ConfigKey("lora_dropout", float, 0.0, "Dropout on the LoRA input.", min=0, max=1, max_open=True),
    ConfigKey("lora_target", (str, list), "all",
              "Modules to adapt: 'all' (every linear layer but the output head) or a comma list of names."),
    ConfigKey("additional_target", (str, list), None,
              "Modules trained fully and saved with the adapter (PEFT modules_to_save)."),
    ConfigKey("create_new_adapter", bool, False,
              "With adapter_name_or_path: merge all of them and train a new adapter instead of continuing the last."),
    ConfigKey("use_dora", bool, False, "Weight-decomposed LoRA (DoRA): adds a trainable magnitude vector per layer."),
    ConfigKey("use_rslora", bool, False, "Rank-stabilised LoRA scaling (alpha / sqrt(rank))."),
    ConfigKey("pissa_init", bool, False, "Initialise from the principal singular vectors (PiSSA)."),
    ConfigKey("pissa_iter", int, 16, "Fast-SVD iterations for PiSSA; -1 for a full (deterministic) SVD."),
    ConfigKey("pissa_convert", bool, False,
              "Also write pissa_converted/: the PiSSA adapter as a plain LoRA for the unmodified base model."),
    ConfigKey("loraplus_lr_ratio", float, None, "LoRA+: learning-rate ratio of B over A (lr_B = lr x ratio)."),
    ConfigKey("loraplus_lr_embedding", float, 1e-6, "LoRA+: learning rate of LoRA adapters on embedding layers."),
)

#: finetuning_type name -> the LLaMA-Factory flag it implies.
VARIANTS = {
    "lora": {},
    "dora": {"use_dora": True},
    "rslora": {"use_rslora": True},
    "pissa": {"pissa_init": True},
}


def effective(config, implied: dict):
    return config.with_values(**implied) if implied else config


def lora_config(config, model):
    from peft import LoraConfig, TaskType

    from tuneforge.errors import TuneforgeError

    targets = names(config.lora_target) or ["all"]
    module_names = [n for n, _ in model.named_modules() if n]
    language = language_linear_names(model)
    if targets == ["all"]:
        targets = language if language is not None else linear_module_names(model)
    else:
        unknown = [t for t in targets if not matches_target(module_names, t)]
        if unknown:
            raise TuneforgeError(f"lora_target: no module named {', '.join(unknown)} in this model; "
                                 f"its linear layers are: {', '.join(linear_module_names(model))} (or use 'all')")
    to_save = names(config.additional_target) or None
    if to_save:
        unknown = [t for t in to_save if not matches_target(module_names, t)]
        if unknown:
            outside = sorted({n.split(".")[-1] for n in module_names if ".layers." not in f"{n}."})
            raise TuneforgeError(f"additional_target: no module named {', '.join(unknown)} in this model "
                                 f"(modules outside the decoder layers: {', '.join(outside)})")
    if language is not None and isinstance(targets, list):
        targets = language_only_targets(targets)
    init = True
    if config.pissa_init:
        init = "pissa" if config.pissa_iter == -1 else f"pissa_niter_{config.pissa_iter}"
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=config.lora_rank,
        lora_alpha=config.lora_alpha if config.lora_alpha is not None else config.lora_rank * 2,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        modules_to_save=to_save,
        use_dora=config.use_dora,
        use_rslora=config.use_rslora,
        init_lora_weights=init,
    )


def apply(ctx, model, implied: dict):
    from peft import PeftModel, get_peft_model

    config = effective(ctx.config, implied)
    adapters = names(config.adapter_name_or_path)
    if adapters:
        # Merge every adapter but the one training continues (or all of them for a new adapter).
        to_merge = adapters if config.create_new_adapter else adapters[:-1]
        for path in to_merge:
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
        if to_merge:
            print(f"merged adapter(s) into the base model: {', '.join(to_merge)}")
        if not config.create_new_adapter:
            print(f"{'continuing' if ctx.training else 'loaded'} adapter {adapters[-1]}")
            return PeftModel.from_pretrained(model, adapters[-1], is_trainable=ctx.training)
    if not ctx.training:
        return model
    if config.pissa_init and config.pissa_iter != -1 and not config.pissa_convert:
        print(f"note: PiSSA with pissa_iter={config.pissa_iter} uses a randomized SVD, which PEFT runs again when it "
              "loads the adapter, so a reload does not reproduce the trained model exactly; set pissa_convert: true "
              "(writes pissa_converted/, a plain LoRA adapter) or pissa_iter: -1 (exact SVD) for a reloadable adapter")
    return get_peft_model(model, lora_config(config, model))


def create_optimizer(ctx, model, args, implied: dict):
    """LoRA+: lora_B (and 1-d) parameters learn loraplus_lr_ratio times faster than lora_A."""
    config = effective(ctx.config, implied)
    if config.loraplus_lr_ratio is None:
        return None
    from transformers import Trainer

    from ._optim import decay_parameter_names

    decay = set(decay_parameter_names(model))
    groups = {"lora_A": [], "lora_B": [], "lora_B_no_decay": [], "embedding": []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if "lora_embedding_B" in name:
            groups["embedding"].append(param)
        elif "lora_B" in name or param.ndim == 1:
            groups["lora_B" if name in decay else "lora_B_no_decay"].append(param)
        else:
            groups["lora_A"].append(param)
    lr = args.learning_rate
    settings = {
        "lora_A": (lr, args.weight_decay),
        "lora_B": (lr * config.loraplus_lr_ratio, args.weight_decay),
        "lora_B_no_decay": (lr * config.loraplus_lr_ratio, 0.0),
        "embedding": (config.loraplus_lr_embedding, args.weight_decay),
    }
    param_groups = [
        {"params": params, "lr": settings[name][0], "weight_decay": settings[name][1], "name": name}
        for name, params in groups.items() if params
    ]
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    optimizer_kwargs = {k: v for k, v in optimizer_kwargs.items() if k not in ("lr", "params", "model")}
    print(f"LoRA+: lr {lr:g} for lora_A, {lr * config.loraplus_lr_ratio:g} for lora_B "
          f"(loraplus_lr_ratio {config.loraplus_lr_ratio:g}), {config.loraplus_lr_embedding:g} for embedding adapters")
    return optimizer_cls(param_groups, lr=lr, **optimizer_kwargs)


def validate(config, plan, implied: dict, name: str) -> list[str]:
    problems = quantized_weight_problems(config, plan)
    for key, value in implied.items():
        if config.is_set(key) and config.get(key) != value:
            problems.append(f"finetuning_type: {name} means {key}: {str(value).lower()}; remove {key}: {config.get(key)}")
    config = effective(config, implied)
    if config.lora_rank is not None and config.lora_rank <= 0:
        problems.append("lora_rank must be positive")
    if config.pissa_init and config.quantization_bit is not None:
        problems.append("pissa_init cannot be used with quantization_bit: PiSSA rewrites the full-precision base weights")
    if config.pissa_convert and not config.pissa_init:
        problems.append("pissa_convert converts a PiSSA adapter: it needs pissa_init: true (or finetuning_type: pissa)")
    if config.pissa_convert and config.use_dora:
        problems.append("pissa_convert cannot convert a DoRA adapter (its magnitude vector has no plain-LoRA form)")
    if config.loraplus_lr_ratio is not None and config.loraplus_lr_ratio <= 0:
        problems.append("loraplus_lr_ratio must be positive (LoRA+ uses lr x ratio for lora_B)")
    return problems


def quantized_weight_problems(config, plan) -> list[str]:
    """What LoRA's own initialisations cannot do on quantized base weights (PiSSA, LoftQ)."""
    source = quantized_by(config, plan)
    if source is None:
        return []
    unquantize = ("set model_name_or_path to the original full-precision model" if plan.prequantized
                  else "remove quantization_bit")
    out = []
    if config.get("pissa_init") or plan.method.name == "pissa":
        out.append(
            f"PiSSA (pissa_init) initialises the adapter from an SVD of the full-precision weights and writes the "
            f"residual back into them, which cannot be done on quantized weights ({source}); use plain LoRA, or "
            f"{unquantize}"
        )
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith("loftq"):
        out.append(
            f"LoftQ (init_lora_weights: {init}) quantizes the full-precision weights itself while it initialises the "
            f"adapter, so it needs the unquantized model ({source}); {unquantize}"
        )
    return out


# --- the adapter on disk (AdapterSpec): what export, reference and reward models use ----------------------------

_A_B = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")


def _adapter_config(path) -> dict | None:
    file = Path(str(path)) / "adapter_config.json"
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_adapter_dir(path) -> bool:
    config = _adapter_config(path)
    return config is not None and str(config.get("peft_type", "")).upper() == "LORA"


def load_adapter(model, path, trainable: bool = False):
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


def merge(model):
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def disabled(model):
    return model.disable_adapter()


def check_trained(path) -> str | None:
    """An adapter whose every lora_B (and lora_embedding_B) is zero, and that saves no other trained
    module, changes nothing: LoRA's B starts at zero, so it was never trained."""
    from safetensors import safe_open

    folder = Path(str(path))
    if not is_adapter_dir(folder):
        return None
    files = sorted(folder.glob("adapter_model*.safetensors"))
    if not files:
        return None
    b_count = 0
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            names_in_file = list(f.keys())
            if any(not any(k in n for k in _A_B) for n in names_in_file):
                return None  # a trained module saved beside the adapter (modules_to_save)
            for n in names_in_file:
                if "lora_B" in n or "lora_embedding_B" in n:
                    if f.get_tensor(n).count_nonzero().item() > 0:
                        return None
                    b_count += 1
    return f"all {b_count} lora_B matrices are zero" if b_count else None


ADAPTER = AdapterSpec(is_adapter_dir=is_adapter_dir, load=load_adapter, merge=merge, disabled=disabled,
                      check_trained=check_trained)


# --- the planner's rule (tuneforge plan) -----------------------------------------------------------------------


def _peft_match(name: str, target: str) -> bool:
    return name == target or name.endswith(f".{target}")


def planned_targets(shape, config) -> list:
    """The modules PEFT adapts: lora_target 'all' is every linear but the head (linear_module_names)."""
    targets = names(config.get("lora_target")) or ["all"]
    if targets == ["all"]:
        leaves = {m.leaf for m in shape.decoder_linears()}
        return [m for m in shape.linears if not m.embedding and m.name != shape.output_head and m.leaf in leaves]
    return [m for m in shape.linears if any(_peft_match(m.name, t) for t in targets)]


def plan_trainable(shape, config, implied: dict) -> TrainablePlan:
    """r x (in + out) per targeted linear (DoRA adds a magnitude vector of ``out``); additional_target
    modules train as full copies beside the frozen originals. Each layer also keeps the rank-r
    intermediate of every adapter it holds (and, with lora_dropout, the dropped input and its mask)."""
    config = effective(config, implied)
    rank = int(config.get("lora_rank") or 8)
    dora = bool(config.get("use_dora"))
    targets = planned_targets(shape, config)
    adapters = sum(rank * (m.in_features + m.out_features) + (m.out_features if dora and not m.embedding else 0)
                   for m in targets)
    to_save = names(config.get("additional_target"))

    def saved(param: str) -> bool:
        """Inside a module PEFT copies for modules_to_save: its rule is a plain suffix match of the module's
        name, so "norm" also takes every input_layernorm and post_attention_layernorm."""
        parts = param.split(".")[:-1]
        return any(".".join(parts[:end]).endswith(t) for end in range(1, len(parts) + 1) for t in to_save)

    copies = sum(numel for name, numel in shape.param_numels.items() if saved(name)) if to_save else 0
    params = adapters + copies
    largest = max((rank * max(m.in_features, m.out_features) for m in targets), default=0)
    per_layer = [m for m in targets if ".layers." in f".{m.name}."]
    layers = max(shape.num_layers, 1)
    values = rank * len(per_layer) / layers
    masks = 0.0
    if float(config.get("lora_dropout") or 0) > 0:
        dropped = sum(m.in_features for m in per_layer) / layers
        values += dropped
        masks = dropped
    return TrainablePlan(params, params, 0, largest, activation_values=values, activation_bytes=masks)


DESCRIPTIONS = {
    "lora": "Low-rank adapters (PEFT): train small A/B matrices beside frozen weights.",
    "dora": "DoRA: LoRA with a trainable magnitude vector per layer (use_dora on lora).",
    "rslora": "rsLoRA: LoRA scaled by alpha/sqrt(rank) (use_rslora on lora).",
    "pissa": "PiSSA: LoRA initialised from the principal singular vectors (pissa_init on lora).",
}


DISPLAY = {"lora": "LoRA", "dora": "DoRA", "rslora": "rsLoRA", "pissa": "PiSSA"}


@hookimpl
def tuneforge_methods():
    return [
        MethodSpec(
            name=name,
            description=DESCRIPTIONS[name],
            keys=KEYS,
            apply=partial(apply, implied=implied),
            create_optimizer=partial(create_optimizer, implied=implied),
            validate=partial(validate, implied=implied, name=name),
            trains_base_weights=False,
            # PiSSA writes the residual into the base weights: switched off, the adapter leaves the residual,
            # not the original model, so there is no "base alone" to compute with
            adapter=ADAPTER if name != "pissa" else replace(ADAPTER, disabled=None),
            plan_trainable=partial(plan_trainable, implied=implied),
            display_name=DISPLAY[name],
        )
        for name, implied in VARIANTS.items()
    ]


# --- PiSSA conversion (pissa_convert): LLaMA-Factory's pissa_init/ and pissa_converted/ folders ------------------


def _ours(ctx) -> dict | None:
    """The implied flags when this run's method is one of this module's, else None."""
    entry = ctx.plan.method
    if entry.record.name != __name__ or entry.name not in VARIANTS:
        return None
    return VARIANTS[entry.name]


def _converting(ctx) -> bool:
    implied = _ours(ctx)
    if implied is None or not ctx.training:
        return False
    config = effective(ctx.config, implied)
    return bool(config.pissa_init and config.pissa_convert and not names(config.adapter_name_or_path))


@hookimpl
def tuneforge_trainer_created(ctx, trainer):
    """Before any step (and before a resume loads its checkpoint) the adapter holds PiSSA's initial values."""
    if not _converting(ctx) or not trainer.is_world_process_zero():
        return
    model = ctx.model
    config = model.peft_config["default"]
    init = config.init_lora_weights
    config.init_lora_weights = True  # the saved initial adapter loads as is, without another SVD
    try:
        model.save_pretrained(str(ctx.output_dir / "pissa_init"))
    finally:
        config.init_lora_weights = init


@hookimpl
def tuneforge_run_end(ctx, metrics):
    if not _converting(ctx) or not ctx.extras.get("is_main_process", True):
        return
    init_dir = ctx.output_dir / "pissa_init"
    out = ctx.output_dir / "pissa_converted"
    ctx.model.save_pretrained(str(out), path_initial_model_for_weight_conversion=str(init_dir))
    print(f"PiSSA adapter converted to a plain LoRA adapter (rank x 2) for the original base model: {out}")
