"""The model as the planner sees it: exact parameter counts and module shapes, read from a model
built on the meta device from its config.json, so no weight is read and no memory is allocated.

Everything the formulas need is here: the total (tied weights counted once), every linear layer's
shape (LoRA adds ``r x (in + out)`` per targeted one; quantizers shrink them), the output head (never
quantized, never a LoRA target under ``all``), and the architecture sizes the activation formula uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: A decoder layer's parameter name: (prefix up to the layer index, index, rest).
LAYER_NAME = re.compile(r"^(.*?\.layers\.(\d+))\.(.+)$")


@dataclass(frozen=True)
class Linear:
    """One linear (or embedding) module: its full name and the sizes LoRA and quantizers need."""

    name: str
    in_features: int
    out_features: int
    embedding: bool = False

    @property
    def leaf(self) -> str:
        return self.name.split(".")[-1]

    @property
    def numel(self) -> int:
        return self.in_features * self.out_features


@dataclass
class ModelShape:
    model_type: str
    architecture: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    #: Every parameter, by name, once (a tied head appears under the embedding's name only).
    param_numels: dict[str, int] = field(default_factory=dict)
    #: Every nn.Linear and nn.Embedding, including the output head.
    linears: list[Linear] = field(default_factory=list)
    #: Full name of the output head module (lm_head), or "" when the model has none.
    output_head: str = ""
    #: Parameter names under each decoder layer index.
    layer_params: dict[int, list[str]] = field(default_factory=dict)

    @property
    def total_params(self) -> int:
        return sum(self.param_numels.values())

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def decoder_linears(self) -> list[Linear]:
        """Linear layers a quantizer converts and ``lora_target: all`` adapts: every nn.Linear but the head."""
        return [m for m in self.linears if not m.embedding and m.name != self.output_head]

    def module_params(self, module_name: str) -> int:
        prefix = module_name + "."
        return sum(n for name, n in self.param_numels.items() if name.startswith(prefix))

    def head_params(self) -> int:
        """Parameters of the output head (the embedding's when the two are tied)."""
        if self.tied_embeddings:
            return max((m.numel for m in self.linears if m.embedding), default=0)
        return self.module_params(self.output_head) if self.output_head else 0

    def largest_layer_params(self) -> int:
        return max((sum(self.param_numels[n] for n in names) for names in self.layer_params.values()), default=0)


def _first(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def load_model_config(config):
    """transformers' config of ``model_name_or_path`` (config.json only; offline when the hub is)."""
    from transformers import AutoConfig

    kwargs = {"trust_remote_code": bool(config.get("trust_remote_code")), "revision": config.get("model_revision") or "main"}
    if config.get("cache_dir"):
        kwargs["cache_dir"] = config.get("cache_dir")
    if config.get("hf_hub_token"):
        kwargs["token"] = config.get("hf_hub_token")
    return AutoConfig.from_pretrained(str(config.model_name_or_path), **kwargs)


def meta_model(model_config, trust_remote_code: bool = False):
    """The causal LM (or, for a vision-language config, the image-text-to-text model) built from its
    config on the meta device: real module tree, no storage."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if getattr(model_config, "vision_config", None) is not None:
        AutoModelForCausalLM = AutoModelForImageTextToText  # noqa: N806 (the vision tower counts too)
    elif getattr(model_config, "audio_config", None) is not None:
        from transformers import AutoModelForMultimodalLM as AutoModelForCausalLM  # noqa: N806 (and the audio tower)

    model_config = model_config.__class__.from_dict(model_config.to_dict())  # ours to edit
    if getattr(model_config, "quantization_config", None) is not None:
        del model_config.quantization_config  # the layout before quantization; the planner applies the bits
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)


def model_shape(model) -> ModelShape:
    """Count ``model`` (meta or real) exactly: the same numbers its parameters() give."""
    import torch

    config = model.config
    text = getattr(config, "text_config", None) or config
    hidden = int(_first(text, "hidden_size", "n_embd", "d_model", default=0))
    heads = int(_first(text, "num_attention_heads", "n_head", default=1))
    head_dim = _first(text, "head_dim", default=None) or hidden // max(heads, 1)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    shape = ModelShape(
        model_type=str(getattr(config, "model_type", "?")),
        architecture=type(model).__name__,
        hidden_size=hidden,
        intermediate_size=int(_first(text, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)),
        num_layers=int(_first(text, "num_hidden_layers", "n_layer", "num_layers", default=0)),
        num_heads=heads,
        num_kv_heads=int(_first(text, "num_key_value_heads", default=heads)),
        head_dim=int(head_dim),
        vocab_size=int(_first(text, "vocab_size", default=0)),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
    )
    for name, param in model.named_parameters():  # named_parameters() yields a tied weight once
        shape.param_numels[name] = param.numel()
        found = LAYER_NAME.match(name)
        if found:
            shape.layer_params.setdefault(int(found.group(2)), []).append(name)
    for name, module in model.named_modules():
        if module is output and output is not None:
            shape.output_head = name
        if isinstance(module, torch.nn.Linear):
            shape.linears.append(Linear(name, module.in_features, module.out_features))
        elif isinstance(module, torch.nn.Embedding):
            shape.linears.append(Linear(name, module.num_embeddings, module.embedding_dim, embedding=True))
    return shape


def shape_from_config(config) -> ModelShape:
    """The ModelShape of the run's model, from config.json alone."""
    return model_shape(meta_model(load_model_config(config), bool(config.get("trust_remote_code"))))
