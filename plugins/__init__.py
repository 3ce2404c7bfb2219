"""Built-in plugins. Each module here is an ordinary pluggy plugin, registered exactly as a
third-party entry point is; the core finds them only through this list."""

BUILTIN_MODULES: tuple[str, ...] = (
    "tuneforge.plugins.loaders.huggingface",
    "tuneforge.plugins.formats.alpaca",
    "tuneforge.plugins.formats.sharegpt",
    "tuneforge.plugins.templates.builtin",
    "tuneforge.plugins.methods.lora",
    "tuneforge.plugins.methods.freeze",
    "tuneforge.plugins.methods.full",
    "tuneforge.plugins.stages.pretrain",
    "tuneforge.plugins.stages.supervised",
)
