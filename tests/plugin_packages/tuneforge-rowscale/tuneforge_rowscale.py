"""rowscale: an adapter method in plain torch (no PEFT): every targeted linear layer gets a trainable
vector ``s`` and computes ``(1 + s) * (W x)``, i.e. a scale per output row, starting at 1.

The adapter is saved on its own (``rowscale_config.json`` + ``rowscale.safetensors``), attached again
to a base model by ``load``, switched off by ``disabled`` and folded into the weights by ``merge``
(``W <- (1 + s)[:, None] * W``, exact), which is everything tuneforge's export, reference models and
planner ask of an adapter method, through its spec.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from tuneforge import AdapterSpec, ConfigKey, MethodSpec, TrainablePlan, hookimpl

CONFIG_FILE = "rowscale_config.json"
WEIGHTS_FILE = "rowscale.safetensors"

KEYS = (
    ConfigKey("rowscale_target", (str, list), "all",
              "Linear layers that get a row scale: 'all' (every linear but the output head) or a comma list of names."),
)


def _targets(config) -> list[str]:
    value = config.get("rowscale_target") or "all"
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [str(i).strip() for i in items if str(i).strip()]


def _linears(model, targets: list[str]):
    import torch

    output = model.get_output_embeddings()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not output:
            if targets == ["all"] or name.split(".")[-1] in targets:
                yield name, module


def _scale_output(module, inputs, output):
    if not module.rowscale_on:
        return output
    return output * (1 + module.rowscale).to(output.dtype)


def _attach(model, names_to_values: dict, trainable: bool):
    import torch

    modules = dict(model.named_modules())
    for name, values in names_to_values.items():
        module = modules[name]
        weight = module.weight
        module.rowscale = torch.nn.Parameter(values.to(weight.device, torch.float32), requires_grad=trainable)
        module.rowscale_on = True
        module.rowscale_hook = module.register_forward_hook(_scale_output)
    model.rowscale_modules = list(names_to_values)
    model.save_pretrained = _adapter_saver(model)  # the trainer saves the adapter only
    return model


def _adapter_saver(model):
    def save_pretrained(output_dir, *args, **kwargs):
        from safetensors.torch import save_file

        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        modules = dict(model.named_modules())
        tensors = {name: modules[name].rowscale.detach().float().cpu().contiguous() for name in model.rowscale_modules}
        save_file(tensors, str(folder / WEIGHTS_FILE))
        base = getattr(model.config, "_name_or_path", "")
        (folder / CONFIG_FILE).write_text(json.dumps({"modules": model.rowscale_modules,
                                                      "base_model_name_or_path": base}, indent=2))

    return save_pretrained


# --- the adapter spec --------------------------------------------------------------------------------------------


def is_adapter_dir(path) -> bool:
    return (Path(str(path)) / CONFIG_FILE).is_file() and (Path(str(path)) / WEIGHTS_FILE).is_file()


def load(model, path, trainable: bool = False):
    from safetensors.torch import load_file

    if getattr(model, "rowscale_modules", None):
        model = merge(model)  # one adapter attached at a time: earlier ones are folded in
    return _attach(model, load_file(str(Path(str(path)) / WEIGHTS_FILE)), trainable)


def merge(model):
    import torch

    modules = dict(model.named_modules())
    with torch.no_grad():
        for name in getattr(model, "rowscale_modules", []):
            module = modules[name]
            scale = (1 + module.rowscale.detach()).to(module.weight.dtype)
            module.weight.mul_(scale[:, None])
            if module.bias is not None:
                module.bias.mul_(scale)
            module.rowscale_hook.remove()
            del module.rowscale, module.rowscale_on, module.rowscale_hook
    model.rowscale_modules = []
    model.__dict__.pop("save_pretrained", None)  # the model's own saving again: a plain model
    return model


@contextlib.contextmanager
def disabled(model):
    modules = dict(model.named_modules())
    attached = [modules[name] for name in getattr(model, "rowscale_modules", [])]
    for module in attached:
        module.rowscale_on = False
    try:
        yield model
    finally:
        for module in attached:
            module.rowscale_on = True


def check_trained(path) -> str | None:
    from safetensors.torch import load_file

    tensors = load_file(str(Path(str(path)) / WEIGHTS_FILE))
    if all(t.count_nonzero().item() == 0 for t in tensors.values()):
        return f"every one of its {len(tensors)} row scales is 0 (1 + s = 1: the identity)"
    return None


ADAPTER = AdapterSpec(is_adapter_dir=is_adapter_dir, load=load, merge=merge, disabled=disabled,
                      check_trained=check_trained)


# --- the method ----------------------------------------------------------------------------------------------------


def apply(ctx, model):
    import torch

    for param in model.parameters():
        param.requires_grad_(False)
    value = ctx.config.get("adapter_name_or_path")
    adapters = [a.strip() for a in (value if isinstance(value, (list, tuple)) else str(value or "").split(",")) if a.strip()]
    for path in adapters[:-1]:
        model = merge(load(model, path))
    if adapters:
        return load(model, adapters[-1], trainable=ctx.training)
    if not ctx.training:
        return model
    fresh = {name: torch.zeros(module.out_features) for name, module in _linears(model, _targets(ctx.config))}
    return _attach(model, fresh, trainable=True)


def plan_trainable(shape, config) -> TrainablePlan:
    """One value per output row of each targeted linear; the layers also keep their scaled output."""
    targets = _targets(config)
    chosen = [m for m in shape.decoder_linears() if targets == ["all"] or m.leaf in targets]
    params = sum(m.out_features for m in chosen)
    per_layer = sum(m.out_features for m in chosen if ".layers." in f".{m.name}.") / max(shape.num_layers, 1)
    return TrainablePlan(params, params, 0, max((m.out_features for m in chosen), default=0),
                         activation_values=per_layer)


def validate(config, plan) -> list[str]:
    return [] if _targets(config) else ["rowscale_target must name at least one layer, or 'all'"]


@hookimpl
def tuneforge_methods():
    return [
        MethodSpec(
            name="rowscale",
            description="A trainable scale per output row of each linear layer (plain torch adapter).",
            keys=KEYS,
            apply=apply,
            validate=validate,
            trains_base_weights=False,
            adapter=ADAPTER,
            plan_trainable=plan_trainable,
        )
    ]
