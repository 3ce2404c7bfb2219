"""LoRA through PEFT, with LLaMA-Factory's keys (DoRA, rsLoRA and PiSSA as flags)."""

from __future__ import annotations

from tuneforge import ConfigKey, MethodSpec, hookimpl

KEYS = (
    ConfigKey("lora_rank", int, 8, "Rank of the LoRA matrices."),
    ConfigKey("lora_alpha", (int, float), None, "LoRA scaling numerator; default 2 x lora_rank."),
    ConfigKey("lora_dropout", float, 0.0, "Dropout on the LoRA input."),
    ConfigKey("lora_target", (str, list), "all",
              "Modules to adapt: 'all' (every linear layer but the output head) or a comma list of names."),
    ConfigKey("additional_target", (str, list), None,
              "Modules trained fully and saved with the adapter (PEFT modules_to_save)."),
    ConfigKey("create_new_adapter", bool, False,
              "With adapter_name_or_path: train a new adapter on top of the merged ones instead of continuing the last."),
    ConfigKey("use_dora", bool, False, "Weight-decomposed LoRA (DoRA)."),
    ConfigKey("use_rslora", bool, False, "Rank-stabilised LoRA scaling (alpha / sqrt(rank))."),
    ConfigKey("pissa_init", bool, False, "Initialise from the principal singular vectors (PiSSA)."),
    ConfigKey("pissa_iter", int, 16, "Fast-SVD iterations for PiSSA; -1 for a full SVD."),
    ConfigKey("pissa_convert", bool, False, "Save the PiSSA adapter converted to a plain LoRA.", effective=False),
    ConfigKey("loraplus_lr_ratio", float, None, "LoRA+: learning-rate ratio of B over A.", effective=False),
    ConfigKey("loraplus_lr_embedding", float, 1e-6, "LoRA+: learning rate of embedding adapters.", effective=False),
)


def _names(value) -> list[str]:
    if value is None:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [i.strip() for i in items if i.strip()]


def linear_module_names(model) -> list[str]:
    """Leaf names of every nn.Linear except the output head: what lora_target: all means."""
    import torch

    output = model.get_output_embeddings()
    names = set()
    for full_name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module is not output:
            names.add(full_name.split(".")[-1])
    return sorted(names)


def lora_config(config, model):
    from peft import LoraConfig, TaskType

    targets = _names(config.lora_target)
    if targets == ["all"]:
        targets = linear_module_names(model)
    init = True
    if config.pissa_init:
        init = "pissa" if config.pissa_iter == -1 else f"pissa_niter_{config.pissa_iter}"
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=config.lora_rank,
        lora_alpha=config.lora_alpha if config.lora_alpha is not None else config.lora_rank * 2,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        modules_to_save=_names(config.additional_target) or None,
        use_dora=config.use_dora,
        use_rslora=config.use_rslora,
        init_lora_weights=init,
    )


def apply(ctx, model):
    from peft import PeftModel, get_peft_model

    config = ctx.config
    adapters = _names(config.adapter_name_or_path)
    if adapters:
        # Merge every adapter but the one training continues (or all of them for a new adapter).
        to_merge = adapters if config.create_new_adapter else adapters[:-1]
        for path in to_merge:
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
        if not config.create_new_adapter:
            return PeftModel.from_pretrained(model, adapters[-1], is_trainable=ctx.training)
    if not ctx.training:
        return model
    return get_peft_model(model, lora_config(config, model))


def validate(config) -> list[str]:
    problems = []
    if config.lora_rank is not None and config.lora_rank <= 0:
        problems.append("lora_rank must be positive")
    if config.pissa_init and config.quantization_bit is not None:
        problems.append("pissa_init cannot be used with quantization_bit: PiSSA needs the full-precision weights")
    if config.use_dora and config.pissa_init:
        problems.append("use_dora and pissa_init cannot be combined")
    return problems


@hookimpl
def tuneforge_methods():
    return [
        MethodSpec(
            name="lora",
            description="Low-rank adapters (PEFT): train small A/B matrices beside frozen weights.",
            keys=KEYS,
            apply=apply,
            validate=validate,
        )
    ]
