"""LLaMA Pro block expansion (`tuneforge expand`): insert zero-output copies of decoder blocks.

After every ``num_layers / num_expand`` layers a copy of the last of them is inserted, with the weights
(and biases) of its output projections set to zero: attention's ``o_proj`` and the MLP's ``down_proj``
(and the other names such projections go by). A block whose residual branches output zero leaves the
hidden state unchanged, so the expanded model's logits equal the original's; the command checks it on
a short input before saving and refuses an architecture where they do not.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

from tuneforge.errors import TuneforgeError

#: Names of the projections that write a block's attention or MLP output back into the residual stream.
OUTPUT_PROJECTIONS = frozenset({"o_proj", "down_proj", "out_proj", "c_proj", "dense_4h_to_h", "fc2", "w2", "wo"})
#: Files beside the weights that the expanded model keeps as they are (tokenizer, templates, processor).
_WEIGHT_FILE = re.compile(r"^(model|pytorch_model).*\.(safetensors|bin)(\.index\.json)?$")


def _decoder_layers(model, num_layers: int):
    """(parent module, attribute name) of the ModuleList holding the decoder layers."""
    import torch

    found = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] in ("layers", "h", "blocks") \
                and len(module) == num_layers:
            found.append(name)
    if not found:
        raise TuneforgeError(f"expand: found no list of {num_layers} decoder layers in {type(model).__name__}; "
                             "tuneforge expand supports decoder-only models whose layers are model.layers")
    name = min(found, key=len)
    parent_name, _, attr = name.rpartition(".")
    return model.get_submodule(parent_name) if parent_name else model, attr


def _zero_outputs(block) -> list[str]:
    zeroed = []
    for name, param in block.named_parameters():
        if OUTPUT_PROJECTIONS & set(name.split(".")):
            param.data.zero_()
            zeroed.append(name)
    return zeroed


def _set_layer_idx(block, index: int) -> None:
    for module in block.modules():
        if isinstance(getattr(module, "layer_idx", None), int):
            module.layer_idx = index


def _probe_ids(model, config):
    import torch

    vocab = int(getattr(config, "vocab_size", 0) or getattr(model.get_input_embeddings(), "num_embeddings", 32))
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (1, 16), generator=generator)


def expand_model(model_path: str, output_dir: str, num_expand: int, shard_size: str = "5GB",
                 safe_serialization: bool = True) -> dict:
    """Expand ``model_path`` by ``num_expand`` identity blocks and save it to ``output_dir``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(output_dir)
    if not safe_serialization:
        raise TuneforgeError("expand: --save_safetensors false asks for PyTorch .bin files, which transformers 5 no "
                             "longer writes; leave it out (safetensors load everywhere .bin did)")
    if Path(model_path).exists() and out.exists() and out.resolve() == Path(model_path).resolve():
        raise TuneforgeError("expand: --output_dir is the model folder itself; name a new folder")
    config = AutoConfig.from_pretrained(model_path)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    num_layers = int(text_config.num_hidden_layers)
    if num_expand <= 0 or num_layers % num_expand:
        raise TuneforgeError(f"expand: --num_expand {num_expand} must be a positive divisor of the model's "
                             f"{num_layers} layers (e.g. {', '.join(str(d) for d in range(1, num_layers + 1) if num_layers % d == 0)})")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="auto").eval()
    ids = _probe_ids(model, text_config)
    with torch.no_grad():
        before = model(input_ids=ids).logits.float()

    parent, attr = _decoder_layers(model, num_layers)
    layers = getattr(parent, attr)
    split = num_layers // num_expand
    expanded, added, old_of_new = [], [], []
    for i, layer in enumerate(layers):
        expanded.append(layer)
        old_of_new.append(i)
        if (i + 1) % split == 0:
            block = copy.deepcopy(layer)
            if not _zero_outputs(block):
                raise TuneforgeError(f"expand: the blocks of {type(model).__name__} have no output projection named "
                                     f"{', '.join(sorted(OUTPUT_PROJECTIONS))}; tuneforge expand cannot make them zero-output")
            added.append(len(expanded))
            expanded.append(block)
            old_of_new.append(i)
    for index, block in enumerate(expanded):
        _set_layer_idx(block, index)
    setattr(parent, attr, torch.nn.ModuleList(expanded))
    new_layers = len(expanded)
    # Per-layer lists in the config (layer_types, ...) grow with the layers: a new block copies its source's entry.
    for cfg in {id(c): c for c in (config, text_config, model.config, getattr(model.config, "get_text_config", lambda: None)())
                if c is not None}.values():
        for key, value in list(vars(cfg).items()):
            if isinstance(value, list) and len(value) == num_layers and key != "architectures":
                setattr(cfg, key, [value[i] for i in old_of_new])
        if getattr(cfg, "num_hidden_layers", None) == num_layers:
            cfg.num_hidden_layers = new_layers

    with torch.no_grad():
        after = model(input_ids=ids).logits.float()
    diff = (after - before).abs().max().item()
    if not torch.allclose(after, before, atol=1e-4, rtol=1e-4):
        raise TuneforgeError(f"expand: the expanded {type(model).__name__} does not give the original's logits "
                             f"(largest difference {diff:.3g}); its blocks are not identity with zero output projections, "
                             "so tuneforge expand does not support this architecture")

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, max_shard_size=shard_size)
    try:
        AutoTokenizer.from_pretrained(model_path).save_pretrained(out)
    except (OSError, ValueError):  # a model without a tokenizer of its own: nothing to copy
        pass
    if Path(model_path).is_dir():  # processor/template files the tokenizer does not write
        for item in Path(model_path).iterdir():
            if item.is_file() and not _WEIGHT_FILE.match(item.name) and not (out / item.name).exists():
                shutil.copy2(item, out / item.name)
    return {"old_layers": num_layers, "new_layers": new_layers, "new_ids": added, "max_logit_diff": diff}
