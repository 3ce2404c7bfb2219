"""normtune: train only the normalisation weights (RMSNorm / LayerNorm) of a causal LM.

Everything else stays frozen, so a run changes a few thousand numbers and the saved model differs
from the base model in its norm weights only (plus the embeddings with normtune_include_embeddings).
"""

from __future__ import annotations

import re

from tuneforge import ConfigKey, MethodSpec, hookimpl

KEYS = (
    ConfigKey("normtune_include_embeddings", bool, False,
              "Also train the input embeddings (embed_tokens)."),
    ConfigKey("normtune_layers", int, None,
              "Train the norms of the last n decoder layers only (plus the final norm); unset: every layer."),
)

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def apply(ctx, model):
    config = ctx.config
    num_layers = model.config.num_hidden_layers
    n = config.normtune_layers
    first = 0 if n is None else max(num_layers - n, 0)
    trained = 0
    for name, param in model.named_parameters():
        layer = _LAYER.search(name)
        train = "norm" in name and (layer is None or int(layer.group(1)) >= first)
        if config.normtune_include_embeddings and "embed_tokens" in name:
            train = True
        param.requires_grad_(train)
        trained += train
    if not trained:
        from tuneforge.errors import TuneforgeError

        raise TuneforgeError("normtune: this model has no parameter whose name contains 'norm'")
    return model


def validate(config) -> list[str]:
    problems = []
    if config.normtune_layers is not None and config.normtune_layers <= 0:
        problems.append(f"normtune_layers must be a positive number of layers, not {config.normtune_layers}")
    if config.quantization_bit is not None:
        problems.append("normtune trains full-precision weights and cannot be used with quantization_bit")
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
        )
    ]
