"""Read and write checkpoint weights tensor by tensor (safetensors or legacy .bin, sharded or not),
so a merged export can be compared with its base without holding two models in memory."""

from __future__ import annotations

import json
from pathlib import Path

SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
WEIGHT_PATTERNS = ("model*.safetensors", SAFE_INDEX, "pytorch_model*.bin", BIN_INDEX)


def weight_map(folder: str | Path) -> dict[str, Path]:
    """Tensor name -> the file holding it, for a model folder (safetensors preferred, as transformers does)."""
    folder = Path(folder)
    for index_name, single in ((SAFE_INDEX, "model.safetensors"), (BIN_INDEX, "pytorch_model.bin")):
        if (folder / index_name).is_file():
            index = json.loads((folder / index_name).read_text(encoding="utf-8"))
            return {name: folder / file for name, file in index["weight_map"].items()}
        if (folder / single).is_file():
            return {name: folder / single for name in _names(folder / single)}
    return {}


def _names(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    import torch

    return list(torch.load(path, map_location="cpu", weights_only=True, mmap=True))


class TensorReader:
    """``reader[name]`` loads one tensor; safetensors files are opened lazily, .bin files once each."""

    def __init__(self, mapping: dict[str, Path]):
        self.mapping = mapping
        self._open: dict[Path, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.mapping

    def __getitem__(self, name: str):
        path = self.mapping[name]
        if path not in self._open:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                self._open[path] = safe_open(str(path), framework="pt")
            else:
                import torch

                self._open[path] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        handle = self._open[path]
        return handle.get_tensor(name) if hasattr(handle, "get_tensor") else handle[name]


def compare(base: dict[str, Path], merged: dict[str, Path], dtype=None) -> dict:
    """Max |merged - base| over the tensors both hold (base cast to the merged dtype first, so a dtype
    change alone is not a difference), with the names of the changed tensors."""
    import torch

    base_reader, merged_reader = TensorReader(base), TensorReader(merged)
    changed: list[str] = []
    max_diff, max_name, compared = 0.0, "", 0
    for name in sorted(merged):
        if name not in base_reader:
            continue
        new = merged_reader[name]
        old = base_reader[name].to(new.dtype)
        if old.shape != new.shape:
            changed.append(name)
            continue
        compared += 1
        diff = (new.float() - old.float()).abs().max().item() if new.numel() else 0.0
        if diff > 0:
            changed.append(name)
        if diff > max_diff:
            max_diff, max_name = diff, name
    return {"compared": compared, "changed": changed, "max_abs_diff": max_diff, "max_at": max_name,
            "only_in_export": sorted(set(merged) - set(base)), "only_in_base": sorted(set(base) - set(merged))}


def save_legacy(model, folder: Path, max_shard_size: str) -> list[str]:
    """PyTorch ``.bin`` shards and their index (transformers 5 writes only safetensors)."""
    import torch
    from huggingface_hub import split_torch_state_dict_into_shards

    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape)) if tensor.numel() else (name,)
        if key in seen:  # tied weights are stored once, as save_pretrained does
            continue
        seen.add(key)
        state[name] = tensor.detach().contiguous().cpu()
    split = split_torch_state_dict_into_shards(state, filename_pattern="pytorch_model{suffix}.bin", max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        torch.save({n: state[n] for n in names}, folder / filename)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / BIN_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    return sorted(split.filename_to_tensors)
