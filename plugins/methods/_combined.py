"""One optimizer made of several (Muon for matrices, AdamW for the rest), as the Trainer expects one.

The param groups are the inner optimizers' own group dicts, so the Trainer's LR scheduler sets every
inner learning rate; state_dict/load_state_dict keep each inner optimizer's state for an exact resume.
"""

from __future__ import annotations

import torch


class CombinedOptimizer(torch.optim.Optimizer):
    def __init__(self, inner: dict[str, torch.optim.Optimizer]):
        self.inner = inner
        super().__init__([g for opt in inner.values() for g in opt.param_groups], {})

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for opt in self.inner.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        for opt in self.inner.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"combined": {name: opt.state_dict() for name, opt in self.inner.items()}}

    def load_state_dict(self, state_dict):
        saved = state_dict["combined"]
        if set(saved) != set(self.inner):
            from tuneforge.errors import TuneforgeError

            raise TuneforgeError(f"the checkpoint's optimizer holds {sorted(saved)}, this run has {sorted(self.inner)}: "
                                 "was the method changed?")
        for name, opt in self.inner.items():
            opt.load_state_dict(saved[name])
        self.param_groups = [g for opt in self.inner.values() for g in opt.param_groups]
