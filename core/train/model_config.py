"""Model-config settings LLaMA-Factory applies before loading: RoPE scaling and the attention kernel.

``rope_scaling`` (linear, dynamic, yarn, llama3) stretches the rotary position embedding so a model
trained on N positions reads longer inputs. As in LLaMA-Factory, the factor is
ceil(cutoff_len / max_position_embeddings) when training on inputs longer than the model's
positions, else 2; the model's ``max_position_embeddings`` grows by the factor (except for dynamic, which
transformers rescales past max_position_embeddings: it stays the pretrained length) and the original
length is kept where the scaling type needs it. transformers 5 reads these from ``rope_parameters``.

``flash_attn: fa2 / fa3`` without the flash-attn package (or without a CUDA GPU) falls back to SDPA with
a warning, as LLaMA-Factory does, instead of failing inside transformers.
"""

from __future__ import annotations

import math


def rope_parameters(config, model_config, training: bool) -> dict | None:
    """The new rope parameters for ``config.rope_scaling``, or None to leave the model as it is."""
    kind = config.rope_scaling
    if not kind:
        return None
    current = dict(getattr(model_config, "rope_parameters", None) or {})
    if not current and getattr(model_config, "rope_scaling", None) is None and not hasattr(model_config, "rope_theta"):
        print(f"warning: rope_scaling: {model_config.model_type} models have no rotary embedding to scale; ignored")
        return None
    old_max = getattr(model_config, "max_position_embeddings", None)
    if not old_max:
        print("warning: rope_scaling: the model config has no max_position_embeddings; ignored")
        return None
    wanted = config.cutoff_len
    if training and wanted and wanted > old_max:
        factor = float(math.ceil(wanted / old_max))
    else:
        factor = 2.0
    params = {k: v for k, v in current.items() if k in ("rope_theta", "partial_rotary_factor")}
    params.update(rope_type=kind, factor=factor)
    if kind in ("dynamic", "yarn", "llama3"):
        params["original_max_position_embeddings"] = old_max
    if kind == "llama3":
        params.update(low_freq_factor=1.0, high_freq_factor=4.0)
    # transformers' dynamic NTK rescales past config.max_position_embeddings, so that must stay the
    # pretrained length for dynamic scaling to start where the model's positions end.
    new_max = old_max if kind == "dynamic" else int(old_max * factor)
    return {"rope_parameters": params, "max_position_embeddings": new_max, "old_max": old_max}


def apply_rope_scaling(config, model_config, training: bool) -> bool:
    """Set the scaled rope on ``model_config`` in place; True when it changed."""
    change = rope_parameters(config, model_config, training)
    if change is None:
        return False
    model_config.rope_parameters = change["rope_parameters"]
    if hasattr(model_config, "rope_scaling") and not isinstance(getattr(type(model_config), "rope_scaling", None), property):
        try:
            model_config.rope_scaling = change["rope_parameters"]
        except AttributeError:
            pass
    model_config.max_position_embeddings = change["max_position_embeddings"]
    p = change["rope_parameters"]
    print(f"rope_scaling: {p['rope_type']} x{p['factor']:g}: max_position_embeddings {change['old_max']} -> "
          f"{change['max_position_embeddings']}")
    return True


#: Where transformers' MoE models read the router auxiliary-loss weight.
_AUX_COEF_NAMES = ("router_aux_loss_coef", "aux_loss_alpha")


def apply_moe_aux_loss(config, model_config, training: bool) -> bool:
    """``moe_aux_loss_coef``: the router's load-balancing loss weight, and (training) the router logits
    the model needs to add that loss, as LLaMA-Factory sets them. True when the config changed."""
    coef = config.moe_aux_loss_coef
    if coef is None:
        return False
    names = [n for n in _AUX_COEF_NAMES if hasattr(model_config, n)]
    if not names:
        print(f"warning: moe_aux_loss_coef: {model_config.model_type} is not a mixture-of-experts model; ignored")
        return False
    for name in names:
        setattr(model_config, name, float(coef))
    if training and hasattr(model_config, "output_router_logits"):
        model_config.output_router_logits = True
    print(f"moe_aux_loss_coef: router auxiliary loss x{float(coef):g}")
    return True


def attention_implementation(flash_attn: str) -> str | None:
    """transformers' attn_implementation for LLaMA-Factory's flash_attn; None: the model's default."""
    if flash_attn == "sdpa":
        return "sdpa"
    if flash_attn == "disabled":
        return "eager"
    if flash_attn in ("fa2", "fa3"):
        import torch
        from transformers.utils import is_flash_attn_2_available

        available = is_flash_attn_2_available()
        if flash_attn == "fa3":
            try:
                from transformers.utils import is_flash_attn_3_available

                available = is_flash_attn_3_available()
            except ImportError:
                available = False
        if not available or not torch.cuda.is_available():
            why = "no CUDA GPU" if not torch.cuda.is_available() else "the flash-attn package is not installed"
            print(f"warning: flash_attn: {flash_attn} needs FlashAttention on a CUDA GPU ({why}); using sdpa")
            return "sdpa"
        return "flash_attention_2" if flash_attn == "fa2" else "flash_attention_3"
    return None
