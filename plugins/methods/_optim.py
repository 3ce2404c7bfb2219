"""Optimizer machinery the LoRA+, GaLore, APOLLO and BAdam plugins share.

Imported only when a method builds its optimizer (it imports torch). Two things here go beyond
LLaMA-Factory so that an interrupted run resumes exactly:

- :func:`resumable` subclasses a GaLore/APOLLO optimizer so its state_dict holds the projectors
  (Python objects in the libraries) as plain tensors and numbers. The Hugging Face Trainer loads
  optimizer state with ``torch.load(weights_only=True)``, which refuses pickled objects, so without
  this a GaLore checkpoint cannot be resumed at all.
- :class:`LayerwiseOptimizer` (``galore_layerwise`` / ``apollo_layerwise``) steps one inner optimizer
  per parameter during backward; its param groups *are* the inner optimizers' groups, so the trainer's
  ordinary LR scheduler drives them, and its state_dict carries every inner optimizer's state.
"""

from __future__ import annotations

import torch

from ._common import names

#: Hugging Face's rule for weight decay: not on biases and norm weights.
_NO_DECAY = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def decay_parameter_names(model) -> list[str]:
    from transformers.trainer_pt_utils import get_parameter_names

    return get_parameter_names(model, [torch.nn.LayerNorm], _NO_DECAY)


def target_linear_params(model, value, key: str) -> list[torch.nn.Parameter]:
    """Weights of the linear layers named by ``value`` ('all' = every linear but the output head)."""
    from tuneforge.errors import TuneforgeError

    output = model.get_output_embeddings()
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not output]
    targets = names(value) or ["all"]
    if targets == ["all"]:
        chosen = linears
    else:
        # LLaMA-Factory matches a target anywhere in the module name ("mlp" takes mlp.gate_proj, ...);
        # here it must be whole name components, so "proj" does not take every projection by accident
        def hit(name: str, target: str) -> bool:
            return f".{target}." in f".{name}."

        unknown = [t for t in targets if not any(hit(n, t) for n, _ in linears)]
        if unknown:
            leaf = sorted({n.split(".")[-1] for n, _ in linears})
            parents = sorted({n.split(".")[-2] for n, _ in linears if "." in n})
            raise TuneforgeError(f"{key}: no linear layer named {', '.join(unknown)}; this model's are: "
                                 f"{', '.join(leaf)} (in {', '.join(parents)}), or use 'all'")
        chosen = [(n, m) for n, m in linears if any(hit(n, t) for t in targets)]
    params = [m.weight for _, m in chosen if m.weight.requires_grad and m.weight.ndim > 1]
    if not params:
        raise TuneforgeError(f"{key}: none of the targeted linear layers trains (are they frozen by freeze tuning?)")
    return params


def param_groups(model, low_rank: list, low_rank_settings: dict, weight_decay: float) -> list[dict]:
    """LLaMA-Factory's three groups: no-decay, decay, and the projected (low-rank) weights."""
    decay = set(decay_parameter_names(model))
    projected = {id(p) for p in low_rank}
    nodecay_params, decay_params = [], []
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in projected:
            (decay_params if name in decay else nodecay_params).append(param)
    groups = [
        {"params": nodecay_params, "weight_decay": 0.0},
        {"params": decay_params, "weight_decay": weight_decay},
        {"params": list(low_rank), "weight_decay": weight_decay, **low_rank_settings},
    ]
    return [g for g in groups if g["params"]]


def adam_kwargs(args) -> dict:
    return {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}


def _tensors_to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_tensors_to(v, device) for v in value)
    return value


def resumable(cls, projector_classes: dict[str, type], name: str | None = None):
    """A subclass of ``cls`` whose state_dict stores each ``state["projector"]`` object as plain data."""

    class Resumable(cls):
        def state_dict(self):
            saved = super().state_dict()
            state, projectors = {}, {}
            for index, param_state in saved["state"].items():
                param_state = dict(param_state)  # the packed state shares dicts with the live state
                projector = param_state.pop("projector", None)
                if projector is not None:
                    projectors[index] = {"class": type(projector).__name__, "attrs": dict(vars(projector))}
                state[index] = param_state
            return {**saved, "state": state, "projectors": projectors}

        def load_state_dict(self, state_dict):
            state_dict = dict(state_dict)
            projectors = state_dict.pop("projectors", {})
            super().load_state_dict(state_dict)
            params = [p for group in self.param_groups for p in group["params"]]
            for index, saved in projectors.items():
                param = params[int(index)]
                projector_cls = projector_classes[saved["class"]]
                projector = projector_cls.__new__(projector_cls)
                projector.__dict__.update({k: _tensors_to(v, param.device) for k, v in saved["attrs"].items()})
                self.state[param]["projector"] = projector

    Resumable.__name__ = Resumable.__qualname__ = f"Resumable{name or cls.__name__}"
    return Resumable


class LayerwiseOptimizer(torch.optim.Optimizer):
    """One inner optimizer per parameter, stepped (and its gradient freed) as soon as the gradient is ready.

    ``step`` and ``zero_grad`` do nothing: the work happens in backward. The param groups are the
    inner optimizers' own group dicts, so a scheduler built on this optimizer sets their learning rate.
    The displayed gradient norm is 0 and max_grad_norm cannot clip (each layer has stepped already).
    """

    def __init__(self, inner: dict):
        self.inner = inner
        super().__init__([g for opt in inner.values() for g in opt.param_groups], {})
        for param in inner:
            param.register_post_accumulate_grad_hook(self._step_param)

    def _step_param(self, param):
        if param.grad is not None:
            self.inner[param].step()
            self.inner[param].zero_grad(set_to_none=True)

    def step(self, closure=None):
        return closure() if closure is not None else None

    def zero_grad(self, set_to_none: bool = True):
        pass

    def state_dict(self):
        return {"layerwise": [opt.state_dict() for opt in self.inner.values()]}

    def load_state_dict(self, state_dict):
        saved = state_dict["layerwise"]
        if len(saved) != len(self.inner):
            from tuneforge.errors import TuneforgeError

            raise TuneforgeError(f"the checkpoint has a layer-wise optimizer for {len(saved)} parameters, "
                                 f"this run has {len(self.inner)}: was the model or the method changed?")
        for opt, opt_state in zip(self.inner.values(), saved):
            opt.load_state_dict(opt_state)
        # load_state_dict gives each inner optimizer new group dicts: share them again with the scheduler
        self.param_groups = [g for opt in self.inner.values() for g in opt.param_groups]


def layerwise(model, groups: list[dict], make) -> LayerwiseOptimizer:
    """Split ``groups`` into one single-parameter group per parameter, each with its own ``make([group])``."""
    inner = {}
    for group in groups:
        settings = {k: v for k, v in group.items() if k != "params"}
        for param in group["params"]:
            inner[param] = make([{"params": [param], **settings}])
    return LayerwiseOptimizer(inner)


def projected_optimizer(model, args, config, prefix: str, label: str, optimizer_cls, kwargs: dict, settings: dict, detail: str):
    """What GaLore and APOLLO share: project the ``{prefix}_target`` matrices, then build the optimizer
    over the parameter groups, layer-wise when ``{prefix}_layerwise`` is set."""
    layerwise_on = config.get(f"{prefix}_layerwise")
    projected = target_linear_params(model, config.get(f"{prefix}_target"), f"{prefix}_target")
    groups = param_groups(model, projected, settings, args.weight_decay)
    print(f"{label}: {len(projected)} weight matrices" + (f" {detail}" if detail else "") + (", layer-wise" if layerwise_on else ""))
    if layerwise_on:
        if args.max_grad_norm and args.max_grad_norm > 0:
            print(f"note: {prefix}_layerwise steps each layer during backward; max_grad_norm is not applied "
                  "and the logged grad_norm is 0")
        return layerwise(model, groups, lambda g: optimizer_cls(g, **kwargs))
    return optimizer_cls(groups, **kwargs)
