"""Freeze tuning: train only some decoder layers (the last n, or the first n when negative)."""

from __future__ import annotations

import re

from tuneforge import ConfigKey, MethodSpec, hookimpl

KEYS = (
    ConfigKey("freeze_trainable_layers", int, 2,
              "Number of trainable decoder layers: positive = the last n, negative = the first n."),
    ConfigKey("freeze_trainable_modules", (str, list), "all",
              "Module names inside the trainable layers that train (comma list), or 'all'."),
    ConfigKey("freeze_extra_modules", (str, list), None,
              "Modules outside the decoder layers that also train (e.g. embed_tokens,lm_head)."),
)

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _names(value) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [i.strip() for i in items if i.strip()]


def trainable_layer_ids(num_layers: int, n: int) -> list[int]:
    if n > 0:
        return list(range(max(num_layers - n, 0), num_layers))
    return list(range(min(-n, num_layers)))


def apply(ctx, model):
    config = ctx.config
    num_layers = model.config.num_hidden_layers
    layers = set(trainable_layer_ids(num_layers, config.freeze_trainable_layers))
    modules = _names(config.freeze_trainable_modules)
    extra = _names(config.freeze_extra_modules)
    matched = 0
    for name, param in model.named_parameters():
        found = _LAYER.search(name)
        train = False
        if found and int(found.group(1)) in layers:
            train = modules == ["all"] or any(f".{m}." in name or name.endswith(f".{m}") or f".{m}" in name for m in modules)
        elif any(f"{m}." in name or name.startswith(m) for m in extra):
            train = True
        param.requires_grad_(train)
        matched += train
    if not matched:
        from tuneforge.errors import TuneforgeError

        raise TuneforgeError(
            f"freeze: no parameter matches freeze_trainable_layers={config.freeze_trainable_layers}, "
            f"freeze_trainable_modules={config.freeze_trainable_modules} (the model has {num_layers} layers)"
        )
    return model


def validate(config) -> list[str]:
    if config.freeze_trainable_layers == 0:
        return ["freeze_trainable_layers must not be 0 (positive = last n layers, negative = first n)"]
    return []


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
