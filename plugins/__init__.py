"""Built-in plugins. Each module here is an ordinary pluggy plugin, registered exactly as a
third-party entry point is; the core finds them only through this list."""

BUILTIN_MODULES: tuple[str, ...] = (
    "tuneforge.plugins.loaders.huggingface",
    "tuneforge.plugins.formats.alpaca",
    "tuneforge.plugins.formats.sharegpt",
    "tuneforge.plugins.formats.openai",
    "tuneforge.plugins.templates.builtin",
    "tuneforge.plugins.methods.lora",
    "tuneforge.plugins.methods.freeze",
    "tuneforge.plugins.methods.full",
    "tuneforge.plugins.methods.galore",
    "tuneforge.plugins.methods.apollo",
    "tuneforge.plugins.methods.badam",
    "tuneforge.plugins.methods.oft",
    "tuneforge.plugins.methods.muon",
    "tuneforge.plugins.methods.adam_mini",
    "tuneforge.plugins.quantizers.bitsandbytes",
    "tuneforge.plugins.quantizers.hqq",
    "tuneforge.plugins.quantizers.gptq",
    "tuneforge.plugins.quantizers.awq",
    "tuneforge.plugins.quantizers.quanto",
    "tuneforge.plugins.quantizers.eetq",
    "tuneforge.plugins.stages.pretrain",
    "tuneforge.plugins.stages.supervised",
    "tuneforge.plugins.stages.reward_model",
    "tuneforge.plugins.stages.preference",
    "tuneforge.plugins.stages.kto",
    "tuneforge.plugins.stages.ppo",
    "tuneforge.plugins.stages.grpo",
    "tuneforge.plugins.rewards.builtin",
    "tuneforge.plugins.engines.huggingface",
    "tuneforge.plugins.engines.vllm",
    "tuneforge.plugins.engines.sglang",
    # The applications built on the core: each adds its verb through tuneforge_commands.
    "tuneforge.plugins.apps.chat.cli",
    "tuneforge.plugins.apps.api.cli",
    "tuneforge.plugins.apps.benchmark.cli",
    "tuneforge.plugins.apps.export.cli",
    "tuneforge.plugins.apps.webui.cli",
    "tuneforge.plugins.apps.tiny_model.cli",
    "tuneforge.plugins.apps.expand.cli",
)

#: What a config selects when it leaves a selection key unset: LLaMA-Factory's defaults. They belong
#: to the built-in plugin set, not to the core, which knows no plugin by name.
DEFAULT_SELECTIONS: dict[str, str] = {
    "stage": "sft",
    "finetuning_type": "lora",
    "model_loader": "huggingface",
    "quantization_method": "bitsandbytes",
    "formatting": "alpaca",
    "infer_backend": "huggingface",
}
