"""OFT through PEFT: orthogonal fine-tuning, LLaMA-Factory's ``finetuning_type: oft``.

OFT learns a block-diagonal orthogonal rotation of each adapted layer's weights instead of a low-rank
update: it preserves the angles between neurons (the "hyperspherical energy" of the pretrained layer).
Its keys are LLaMA-Factory's: ``oft_rank`` (number of blocks; 0 means derive it from the block size),
``oft_block_size`` (rows of a block; 0 means derive it from the rank), ``oft_target``,
``module_dropout``. The adapter saves and loads like a LoRA adapter (adapter_model.safetensors), so
chat, export (merge) and ``adapter_name_or_path`` work as for LoRA. On a quantized base model
(``quantization_bit``) it is LLaMA-Factory's QOFT.
"""

from __future__ import annotations

from tuneforge import AdapterSpec, ConfigKey, MethodSpec, hookimpl

from ._common import lora_only_problems, names

KEYS = (
    ConfigKey("oft_rank", int, 0,
              "OFT: number of orthogonal blocks per layer; 0 derives it from oft_block_size (set exactly one)."),
    ConfigKey("oft_block_size", int, 32,
              "OFT: size of each orthogonal block; 0 derives it from oft_rank (set exactly one)."),
    ConfigKey("oft_target", (str, list), "all",
              "OFT: modules to adapt: 'all' (every linear layer but the output head; on a vision-language model "
              "those of the language model only) or a comma list of names."),
    ConfigKey("module_dropout", float, 0.0, "OFT: probability of dropping a whole adapted block during training."),
    ConfigKey("additional_target", (str, list), None,
              "Modules trained fully and saved with the adapter (PEFT modules_to_save)."),
    ConfigKey("create_new_adapter", bool, False,
              "With adapter_name_or_path: merge all of them and train a new adapter instead of continuing the last."),
)


def oft_config(config, model):
    from peft import OFTConfig, TaskType

    from tuneforge.errors import TuneforgeError

    from ._common import language_linear_names, language_only_targets, linear_module_names, matches_target

    targets = names(config.oft_target) or ["all"]
    module_names = [n for n, _ in model.named_modules() if n]
    language = language_linear_names(model)  # a vision-language model: 'all' stays off the vision side
    if targets == ["all"]:
        targets = language if language is not None else linear_module_names(model)
    else:
        unknown = [t for t in targets if not matches_target(module_names, t)]
        if unknown:
            raise TuneforgeError(f"oft_target: no module named {', '.join(unknown)} in this model; "
                                 f"its linear layers are: {', '.join(linear_module_names(model))} (or use 'all')")
    _fit_blocks(config, model, targets, vision_too=language is None)
    if language is not None:
        targets = language_only_targets(targets)
    return OFTConfig(
        task_type=TaskType.CAUSAL_LM,
        r=config.oft_rank,
        oft_block_size=config.oft_block_size,
        target_modules=targets,
        module_dropout=config.module_dropout,
        modules_to_save=names(config.additional_target) or None,
    )


def _fit_blocks(config, model, targets, vision_too: bool = True) -> None:
    """PEFT needs the block size to divide every adapted layer's input width: say which one does not."""
    import torch

    from ._common import _vision_side

    from tuneforge.errors import TuneforgeError

    block = config.oft_block_size
    rank = config.oft_rank
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.split(".")[-1] not in targets:
            continue
        if not vision_too and _vision_side(name):
            continue
        width = module.in_features
        if block and width % block:
            raise TuneforgeError(f"oft_block_size {block} does not divide the input width {width} of {name}; "
                                 f"choose a divisor of {width} (or set oft_rank instead, with oft_block_size: 0)")
        if rank and width % rank:
            raise TuneforgeError(f"oft_rank {rank} does not divide the input width {width} of {name}; "
                                 f"choose a divisor of {width}")


def apply(ctx, model):
    from peft import PeftModel, get_peft_model

    config = ctx.config
    adapters = names(config.adapter_name_or_path)
    if adapters:
        to_merge = adapters if config.create_new_adapter else adapters[:-1]
        for path in to_merge:
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
        if not config.create_new_adapter:
            return PeftModel.from_pretrained(model, adapters[-1], is_trainable=ctx.training)
    if not ctx.training:
        return model
    return get_peft_model(model, oft_config(config, model))


def is_adapter_dir(path) -> bool:
    import json
    from pathlib import Path

    file = Path(str(path)) / "adapter_config.json"
    try:
        return file.is_file() and str(json.loads(file.read_text(encoding="utf-8")).get("peft_type", "")).upper() == "OFT"
    except (OSError, ValueError):
        return False


def load_adapter(model, path, trainable: bool = False):
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


def merge(model):
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


#: OFT's adapters, as PEFT saves, loads and merges them (its rotations start at the identity, so an
#: untrained adapter is not told apart here: check_trained is left out).
ADAPTER = AdapterSpec(is_adapter_dir=is_adapter_dir, load=load_adapter, merge=merge, disabled=lambda model: model.disable_adapter())


def validate(config, plan) -> list[str]:
    problems = lora_only_problems(config, "oft")
    rank, block = config.get("oft_rank") or 0, config.get("oft_block_size") or 0
    if rank < 0 or block < 0:
        problems.append("oft_rank and oft_block_size must not be negative")
    elif (rank == 0) == (block == 0):
        problems.append(f"set exactly one of oft_rank and oft_block_size (the other 0); got oft_rank {rank}, "
                        f"oft_block_size {block}")
    dropout = config.get("module_dropout") or 0.0
    if not 0.0 <= dropout < 1.0:
        problems.append(f"module_dropout must be in [0, 1), got {dropout}")
    return problems


@hookimpl
def tuneforge_methods():
    return [MethodSpec(
        name="oft",
        description="Orthogonal fine-tuning (PEFT OFT): train block-diagonal rotations of frozen weights.",
        keys=KEYS,
        apply=apply,
        validate=validate,
        trains_base_weights=False,
        adapter=ADAPTER,
        display_name="OFT",
    )]
