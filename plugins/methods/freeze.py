"""Freeze tuning: train only some decoder layers (the last n, or the first n when negative).

``freeze_trainable_modules`` narrows what trains inside those layers (``self_attn``, ``mlp``,
``q_proj``, ``mlp.up_proj``, ... or ``all``); ``freeze_extra_modules`` adds modules outside the
decoder layers (``embed_tokens``, ``norm``, ``lm_head``). Names are checked against the model, and an
unknown one is an error that lists the names the model has. On a vision-language model the layers are
the language model's; the vision tower and projector stay frozen.
"""

from __future__ import annotations

from tuneforge import MethodSpec, hookimpl

from ._common import (FREEZE_KEYS, LAYER, freeze_problems, freeze_selector, llama_pro_layer_ids, lora_only_problems, names,
                      plan_freeze)

KEYS = FREEZE_KEYS


def _module_names(model) -> tuple[set[str], set[str]]:
    """(names usable inside a decoder layer, names of modules outside the layers)."""
    inner, outer = set(), set()
    for full_name, _ in model.named_modules():
        found = LAYER.match(full_name)
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
    num_layers = model.config.get_text_config().num_hidden_layers  # a VLM's: its language model's
    if config.use_llama_pro:
        print(f"use_llama_pro: training the expanded blocks {llama_pro_layer_ids(num_layers, config.freeze_trainable_layers)} "
              f"of {num_layers} layers")
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

    trains = freeze_selector(config, num_layers)
    trained = 0
    for name, param in model.named_parameters():
        train = trains(name)
        param.requires_grad_(train)
        trained += train
    if not trained:
        raise TuneforgeError(
            f"freeze: no parameter matches freeze_trainable_layers={config.freeze_trainable_layers}, "
            f"freeze_trainable_modules={config.freeze_trainable_modules} (the model has {num_layers} layers)"
        )
    return model


def validate(config, plan) -> list[str]:
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
            plan_trainable=plan_freeze,
        )
    ]
