"""New tokens: LLaMA-Factory's add_tokens, add_special_tokens (new_special_tokens), new_special_tokens_config
and resize_vocab.

The tokens join the tokenizer wherever it is loaded (data processing, training, chat, export), so a
config that sets them sees the same ids everywhere. The model's embedding (and output) matrix grows to
the tokenizer's length (a multiple of 64, as LLaMA-Factory pads it); each new row starts as
``init_special_tokens`` says: ``noise_init`` (the mean of the existing rows plus noise of std
1/sqrt(hidden size)), ``desc_init`` (the mean embedding of the token's description from
new_special_tokens_config) or ``desc_init_w_noise`` (both). For LoRA and OFT the embedding and output
layers are then trained and saved with the adapter (``additional_target``, PEFT's modules_to_save), so
the new rows learn and reload; full and freeze tuning train them with the rest.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import TuneforgeError


def _names(value) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(i).strip() for i in items if str(i).strip()]


def token_descriptions(config) -> dict[str, str] | None:
    """new_special_tokens_config: a YAML mapping of token -> description, or None when unset."""
    path = config.get("new_special_tokens_config")
    if not path:
        return None
    import yaml

    file = Path(path)
    if not file.is_file():
        raise TuneforgeError(f"new_special_tokens_config: {path} is not a file (a YAML mapping of token: description)")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TuneforgeError(f"new_special_tokens_config: {path} is not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise TuneforgeError(f"new_special_tokens_config: {path} must be a mapping of token: description")
    return {str(k): str(v) for k, v in data.items()}


def requested_tokens(config) -> tuple[list[str], list[str]]:
    """(plain tokens, special tokens) the config adds; the YAML config wins over add_special_tokens."""
    descriptions = token_descriptions(config)
    special = list(descriptions) if descriptions else (_names(config.get("add_special_tokens"))
                                                      or _names(config.get("new_special_tokens")))
    return _names(config.get("add_tokens")), special


def grows_vocab(config) -> bool:
    plain, special = requested_tokens(config)
    return bool(config.get("resize_vocab") or plain or special)


def add_to_tokenizer(config, tokenizer) -> int:
    """Add the requested tokens (those it lacks); the number added."""
    plain, special = requested_tokens(config)
    added = 0
    if plain:
        added += tokenizer.add_tokens(plain)
    if special:
        added += tokenizer.add_tokens(special, special_tokens=True)
    if added:
        print(f"tokenizer: added {added} token(s) ({', '.join(plain + special)}); vocabulary now {len(tokenizer)}")
    return added


def resize_embeddings(config, model, tokenizer, training: bool) -> list[int]:
    """Grow the embedding matrix to the tokenizer; initialise the new rows; return their ids."""
    import torch

    embeddings = model.get_input_embeddings()
    old = embeddings.weight.shape[0]
    wanted = len(tokenizer)
    if wanted <= old:
        return []
    model.resize_token_embeddings(wanted, pad_to_multiple_of=64, mean_resizing=False)
    new_ids = list(range(old, model.get_input_embeddings().weight.shape[0]))
    print(f"resize_vocab: embedding rows {old} -> {len(new_ids) + old} (tokenizer {wanted}, padded to a multiple of 64)")
    if not training:
        return new_ids  # the rows are overwritten by the trained adapter or checkpoint
    descriptions = token_descriptions(config) or {}
    method = config.get("init_special_tokens") or "noise_init"
    generator = torch.Generator().manual_seed(int(config.get("seed") or 42))
    with torch.no_grad():
        for matrix in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}.values():
            weight = matrix.weight
            if weight.shape[0] <= old:
                continue
            mean = weight[:old].float().mean(dim=0)
            noise_std = 1.0 / math.sqrt(weight.shape[1])
            for row in new_ids:
                token = tokenizer.convert_ids_to_tokens(row) if row < wanted else None
                base = mean
                if method in ("desc_init", "desc_init_w_noise") and token in descriptions:
                    ids = tokenizer(descriptions[token], add_special_tokens=False)["input_ids"]
                    ids = [i for i in ids if i < old]
                    if ids:
                        base = weight[ids].float().mean(dim=0)
                value = base
                if method != "desc_init" or token not in descriptions:
                    value = base + torch.randn(weight.shape[1], generator=generator) * noise_std
                weight[row] = value.to(weight.dtype)
    return new_ids


def embedding_module_names(model) -> list[str]:
    """Leaf names of the input and output embedding layers, for PEFT's modules_to_save."""
    wanted = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
    found = []
    for name, module in model.named_modules():
        if any(module is m for m in wanted) and name:
            leaf = name.split(".")[-1]
            if leaf not in found:
                found.append(leaf)
    return found
