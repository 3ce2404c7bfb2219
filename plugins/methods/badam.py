"""BAdam: block-coordinate full fine-tuning (the badam package).

``badam_mode: layer`` trains one block (a decoder layer) at a time with Adam and moves to the next
block every ``badam_switch_interval`` steps; ``badam_mode: ratio`` updates a sparse fraction
(``badam_update_ratio``) of every weight. Selected by ``finetuning_type: badam`` or LLaMA-Factory's
``use_badam: true`` (with ``finetuning_type: full``, or unset). BAdam picks the trainable parameters
itself, so it cannot be combined with freeze or LoRA.

Layer mode checkpoints resume exactly: the active block, the switching schedule and the Adam state of
the block are saved with the optimizer (the badam package alone saves only the Adam state).
"""

from __future__ import annotations

from tuneforge import ConfigKey, MethodSpec, Requirement, TrainablePlan, hookimpl
from tuneforge.plugin_helpers import deepspeed_stage, world_size

from ._common import optimizer_method_problems

KEYS = (
    ConfigKey("use_badam", bool, False, "Select BAdam (LLaMA-Factory's flag; same as finetuning_type: badam)."),
    ConfigKey("badam_mode", str, "layer", "layer: one block at a time; ratio: a sparse fraction of every weight.",
              choices=("layer", "ratio")),
    ConfigKey("badam_start_block", int, None, "Index of the first block to train (layer mode)."),
    ConfigKey("badam_switch_mode", str, "ascending", "Order of the blocks (layer mode).",
              choices=("ascending", "descending", "random", "fixed")),
    ConfigKey("badam_switch_interval", int, 50, "Steps before moving to the next block (layer mode); -1: never."),
    ConfigKey("badam_update_ratio", float, 0.05, "Fraction of each weight updated (ratio mode)."),
    ConfigKey("badam_mask_mode", str, "adjacent", "Which entries ratio mode updates.", choices=("adjacent", "scatter")),
    ConfigKey("badam_verbose", int, 0, "0: quiet; 1: print the active block; 2: also every trainable parameter."),
)


def apply(ctx, model):
    # BAdam keeps its own fp32 copies of the active block; the model stays in the compute dtype
    # (keeps_trainable_dtype on the spec)
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def plan_trainable(shape, config) -> TrainablePlan:
    """Layer mode: gradients and Adam state for one decoder layer at a time (the largest); ratio mode:
    gradients of every weight, state for a fraction of them (plan_optimizer_state)."""
    total = shape.total_params
    if config.get("badam_mode") == "ratio":
        return TrainablePlan(total, total, shape.head_params(), notes=(
            "BAdam ratio mode: gradients of every weight; optimizer state for badam_update_ratio of them",))
    layer = shape.largest_layer_params()
    return TrainablePlan(total, layer, 0, layer, notes=(
        "BAdam layer mode: gradients and Adam state for one decoder layer at a time (the largest)",))


def plan_optimizer_state(shape, config, trainable, per_param: int, optimizer: str):
    if config.get("badam_mode") != "ratio":
        return None
    ratio = float(config.get("badam_update_ratio") or 0.05)
    params = trainable.with_grads if trainable.with_grads is not None else trainable.params
    return int(params * ratio * per_param), f"{optimizer} for badam_update_ratio {ratio:g} of {params:,}"


def _resumable_block_optimizer():
    from badam import BlockOptimizer

    class ResumableBlockOptimizer(BlockOptimizer):
        """BlockOptimizer whose state_dict also holds the block schedule, so a resume trains the same block."""

        def __init__(self, *args, **kwargs):
            self.active_block = None
            super().__init__(*args, **kwargs)
            del self.state_dict  # BlockOptimizer shadows state_dict with the base optimizer's bound method

        def switch_trainable_params(self, verbose=None):
            self.active_block = self.current_block_idx
            super().switch_trainable_params(self.verbose if verbose is None else verbose)

        def state_dict(self):
            return {
                "base": self.base_optimizer.state_dict(),
                "badam": {
                    "active_block": self.active_block,
                    "next_block": self.current_block_idx,
                    "block_order": list(getattr(self, "block_order", [])),
                    "global_step": self.global_step,
                    # the learning rate the scheduler set for the next step: BlockOptimizer copies it from its
                    # own groups to the base optimizer at each step, so it must come back on a resume too
                    "lrs": [group["lr"] for group in self.param_groups],
                },
            }

        def load_state_dict(self, state_dict):
            saved = state_dict["badam"]
            if saved["active_block"] != self.active_block or saved["global_step"] != self.global_step:
                self.current_block_idx = saved["active_block"]
                self.switch_trainable_params(verbose=0)  # fresh fp32 copies of that block from the loaded weights
            self.current_block_idx = saved["next_block"]
            if self.switch_mode == "random":
                self.block_order = list(saved["block_order"])
            self.global_step = saved["global_step"]
            for group, lr in zip(self.param_groups, saved.get("lrs", [])):
                group["lr"] = lr
            self.base_optimizer.load_state_dict(state_dict["base"])

    return ResumableBlockOptimizer


def create_optimizer(ctx, model, args):
    import sys
    import warnings

    import torch
    from transformers import Trainer

    from ._optim import adam_kwargs, param_groups

    config = ctx.config
    groups = param_groups(model, [], {}, args.weight_decay)
    named = list(model.named_parameters())
    if config.badam_mode == "layer":
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        optimizer_kwargs = {k: v for k, v in optimizer_kwargs.items() if k not in ("params", "model", "fused", "foreach")}
        base = optimizer_cls(groups, **optimizer_kwargs)
        with warnings.catch_warnings():  # BAdam lists every fp32 parameter; one line says it (below)
            warnings.filterwarnings("ignore", message="BAdam expect model to be loaded in fp16/bf16")
            optimizer = _resumable_block_optimizer()(
                base_optimizer=base,
                named_parameters_list=named,
                block_prefix_list=None,
                # the package switches every step for -1 (x % -1 == 0); LLaMA-Factory documents -1 as "never"
                switch_block_every=sys.maxsize if config.badam_switch_interval == -1 else config.badam_switch_interval,
                start_block=config.badam_start_block,
                switch_mode=config.badam_switch_mode,
                verbose=config.badam_verbose,
            )
        if any(p.dtype == torch.float32 for _, p in named):
            print("note: BAdam works on an fp32 model here; with bf16: true the model stays in bf16 and BAdam keeps "
                  "fp32 copies of the active block only, which is where its memory saving comes from")
        print(f"BAdam (layer): {optimizer.block_num} blocks, {config.badam_switch_mode} order, "
              f"switching every {config.badam_switch_interval} steps, starting with block {optimizer.active_block}")
        return optimizer
    from badam import BlockOptimizerRatio

    optimizer = BlockOptimizerRatio(
        param_groups=groups,
        named_parameters_list=named,
        update_ratio=config.badam_update_ratio,
        mask_mode=config.badam_mask_mode,
        verbose=config.badam_verbose,
        include_embedding=False,
        **adam_kwargs(args),
    )
    print(f"BAdam (ratio): {config.badam_update_ratio:g} of every weight updated per step ({config.badam_mask_mode} mask)")
    return optimizer


@hookimpl
def tuneforge_trainer_created(ctx, trainer):
    """BAdam's ratio mode has sparse gradients, which torch's foreach gradient clipping cannot norm."""
    entry = ctx.plan.method
    if entry.record.name != __name__ or entry.name != "badam":
        return
    from types import MethodType

    from badam import clip_grad_norm_old_version

    trainer.accelerator.clip_grad_norm_ = MethodType(clip_grad_norm_old_version, trainer.accelerator)


def validate(config, plan) -> list[str]:
    problems = optimizer_method_problems(config, plan, "badam")
    if config.is_set("finetuning_type") and config.finetuning_type == "freeze":
        problems.append("BAdam chooses the trainable block itself and cannot be combined with finetuning_type: freeze; "
                        "use finetuning_type: full")
    if deepspeed_stage(config) == 3:
        problems.append("BAdam with DeepSpeed ZeRO-3 is not supported by tuneforge's BAdam integration; drop deepspeed")
    processes = world_size(config)
    if processes > 1:
        problems.append(f"BAdam trains in one process here ({processes} processes from WORLD_SIZE/NPROC_PER_NODE/ray_num_workers): "
                        "ratio mode does not support distributed training and layer mode needs DeepSpeed ZeRO-3")
    if config.badam_mode == "ratio" and not 0 < config.badam_update_ratio <= 1:
        problems.append(f"badam_update_ratio must be in (0, 1], not {config.badam_update_ratio}")
    if config.badam_mode == "layer" and config.badam_switch_interval is not None and config.badam_switch_interval == 0:
        problems.append("badam_switch_interval must be a positive number of steps, or -1 never to switch")
    return problems


@hookimpl
def tuneforge_methods():
    return [
        MethodSpec(
            name="badam",
            description="BAdam: block-coordinate full tuning, one layer (or a sparse ratio) at a time (badam).",
            keys=KEYS,
            requires=(Requirement("badam", "pip install 'tuneforge[optim]'"),),
            apply=apply,
            create_optimizer=create_optimizer,
            validate=validate,
            keeps_trainable_dtype=True,
            trains_added_modules=False,
            plan_trainable=plan_trainable,
            plan_optimizer_state=plan_optimizer_state,
            display_name="BAdam",
            flag="use_badam",
        )
    ]
