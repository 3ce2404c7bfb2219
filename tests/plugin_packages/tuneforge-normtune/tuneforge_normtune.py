"""normtune: train only the normalisation weights (RMSNorm / LayerNorm) of a causal LM.

Everything else stays frozen, so a run changes a few thousand numbers and the saved model differs
from the base model in its norm weights only (plus the embeddings with normtune_include_embeddings).
"""

from __future__ import annotations

import re

from tuneforge import ConfigKey, MethodSpec, TrainablePlan, hookimpl

KEYS = (
    ConfigKey("normtune_include_embeddings", bool, False,
              "Also train the input embeddings (embed_tokens)."),
    ConfigKey("normtune_layers", int, None,
              "Train the norms of the last n decoder layers only (plus the final norm); unset: every layer."),
)

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def selector(config, num_layers: int):
    """The rule, once: what trains, by parameter name (used by apply and by the planner's count)."""
    n = config.get("normtune_layers")
    first = 0 if n is None else max(num_layers - n, 0)

    def trains(name: str) -> bool:
        layer = _LAYER.search(name)
        if config.get("normtune_include_embeddings") and "embed_tokens" in name:
            return True
        return "norm" in name and (layer is None or int(layer.group(1)) >= first)

    return trains


def apply(ctx, model):
    trains = selector(ctx.config, model.config.num_hidden_layers)
    trained = 0
    for name, param in model.named_parameters():
        train = trains(name)
        param.requires_grad_(train)
        trained += train
    if not trained:
        from tuneforge.errors import TuneforgeError

        raise TuneforgeError("normtune: this model has no parameter whose name contains 'norm'")
    return model


def plan_trainable(shape, config) -> TrainablePlan:
    """For `tuneforge plan`: the same rule over the parameter names of the model's shape."""
    trains = selector(config, shape.num_layers)
    return TrainablePlan(sum(numel for name, numel in shape.param_numels.items() if trains(name)))


def validate(config, plan) -> list[str]:
    # Quantized weights are refused by tuneforge itself: the spec says trains_base_weights (the default).
    problems = []
    if config.normtune_layers is not None and config.normtune_layers <= 0:
        problems.append(f"normtune_layers must be a positive number of layers, not {config.normtune_layers}")
    return problems


@hookimpl
def tuneforge_methods():
    return [
        MethodSpec(
            name="normtune",
            description="Train only the normalisation weights (every parameter whose name contains 'norm').",
            keys=KEYS,
            apply=apply,
            validate=validate,
            trains_base_weights=True,
            plan_trainable=plan_trainable,
        )
    ]
