"""Freeze tuning: train only some decoder layers (the last n, or the first n when negative).

``freeze_trainable_modules`` narrows what trains inside those layers (``self_attn``, ``mlp``,
``q_proj``, ``mlp.up_proj``, ... or ``all``); ``freeze_extra_modules`` adds modules outside the
decoder layers (``embed_tokens``, ``norm``, ``lm_head``). Names are checked against the model, and an
unknown one is an error that lists the names the model has.
"""

from __future__ import annotations

import re

from tuneforge import ConfigKey, MethodSpec, hookimpl

from ._common import lora_only_problems, names

KEYS = (
    ConfigKey("freeze_trainable_layers", int, 2,
              "Number of trainable decoder layers: positive = the last n, negative = the first n."),
    ConfigKey("freeze_trainable_modules", (str, list), "all",
              "Module names inside the trainable layers that train (comma list), or 'all'."),
    ConfigKey("freeze_extra_modules", (str, list), None,
              "Modules outside the decoder layers that also train (e.g. embed_tokens,lm_head)."),
)

_LAYER = re.compile(r"^(.*?\.layers\.(\d+))\.(.+)$")


def llama_pro_layer_ids(num_layers: int, n: int) -> list[int]:
    """LLaMA Pro (use_llama_pro): the n blocks its expansion added, the last of every num_layers/n layers."""
    from tuneforge.errors import TuneforgeError

    if n <= 0 or num_layers % n:
        raise TuneforgeError(f"use_llama_pro: the model has {num_layers} layers, which freeze_trainable_layers={n} "
                             "(the number of added blocks) must divide; set it to the number of blocks the expansion added")
    stride = num_layers // n
    return list(range(stride - 1, num_layers, stride))


def trainable_layer_ids(num_layers: int, n: int) -> list[int]:
    if n > 0:
        return list(range(max(num_layers - n, 0), num_layers))
    return list(range(min(-n, num_layers)))


def _contains(path: str, name: str) -> bool:
    """Whether dotted ``name`` is a run of whole components of dotted ``path``."""
    return f".{name}." in f".{path}."


def _module_names(model) -> tuple[set[str], set[str]]:
    """(names usable inside a decoder layer, names of modules outside the layers)."""
    inner, outer = set(), set()
    for full_name, _ in model.named_modules():
        found = _LAYER.match(full_name)
        if found:
            parts = found.group(3).split(".")
            inner.update(parts)
            inner.update(".".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1))
        elif full_name and ".layers" not in f".{full_name}" and not full_name.endswith("layers"):
            outer.update(full_name.split("."))
    inner.discard("")
    outer.discard(getattr(model, "base_model_prefix", "model"))
    return inner, outer


def apply(ctx, model):
    from tuneforge.errors import TuneforgeError

    config = ctx.config
    num_layers = model.config.num_hidden_layers
    if config.use_llama_pro:
        layers = set(llama_pro_layer_ids(num_layers, config.freeze_trainable_layers))
        print(f"use_llama_pro: training the expanded blocks {sorted(layers)} of {num_layers} layers")
    else:
        layers = set(trainable_layer_ids(num_layers, config.freeze_trainable_layers))
    modules = names(config.freeze_trainable_modules) or ["all"]
    extra = names(config.freeze_extra_modules)
    inner, outer = _module_names(model)
    problems = [f"freeze_trainable_modules: '{m}' is not a module of the decoder layers" for m in modules
                if m != "all" and m not in inner]
    problems += [f"freeze_extra_modules: '{m}' is not a module outside the decoder layers" for m in extra if m not in outer]
    if problems:
        choices_inner = ", ".join(sorted(n for n in inner if "." not in n))
        choices_outer = ", ".join(sorted(outer - {"model"}))
        raise TuneforgeError("; ".join(problems) + f" (decoder-layer modules: {choices_inner}; other modules: {choices_outer})")

    trained = 0
    for name, param in model.named_parameters():
        found = _LAYER.match(name)
        if found:
            train = int(found.group(2)) in layers and (modules == ["all"] or any(_contains(found.group(3), m) for m in modules))
        else:
            train = any(_contains(name, m) for m in extra)
        param.requires_grad_(train)
        trained += train
    if not trained:
        raise TuneforgeError(
            f"freeze: no parameter matches freeze_trainable_layers={config.freeze_trainable_layers}, "
            f"freeze_trainable_modules={config.freeze_trainable_modules} (the model has {num_layers} layers)"
        )
    return model


def freeze_problems(config) -> list[str]:
    if config.freeze_trainable_layers == 0:
        return ["freeze_trainable_layers must not be 0 (positive = last n layers, negative = first n)"]
    return []


def validate(config) -> list[str]:
    return lora_only_problems(config, "freeze") + freeze_problems(config)


@hookimpl
def tuneforge_methods():
    return [
        MethodSpec(
            name="freeze",
            description="Train only the chosen decoder layers (and extra modules); the rest stays frozen.",
            keys=KEYS,
            apply=apply,
            validate=validate,
        )
    ]
