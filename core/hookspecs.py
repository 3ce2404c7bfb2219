"""Every hook a tuneforge plugin can implement.

A plugin is a module (or object) with functions decorated ``@tuneforge.hookimpl`` whose names match
the specs below. Built-in plugins in ``tuneforge.plugins`` use exactly this path; third-party ones are
found through the ``tuneforge`` entry-point group. docs/hooks.md lists the same hooks for plugin
authors, and a test keeps the two in step.

Registration hooks return an iterable of spec objects (see :mod:`tuneforge.specs`): the core reads
names, keys and dependencies from them without running the plugin's heavy code.
"""

from __future__ import annotations

from typing import Any, Iterable

import pluggy

from .specs import (
    ChatTemplateSpec,
    CommandSpec,
    DatasetFormatSpec,
    InferenceEngineSpec,
    MethodSpec,
    ModelLoaderSpec,
    QuantizerSpec,
    RewardFunctionSpec,
    StageSpec,
)

PROJECT = "tuneforge"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration: one hook per plugin kind ---------------------------------------------------


@hookspec
def tuneforge_model_loaders() -> Iterable[ModelLoaderSpec]:
    """Model loaders, selected with the ``model_loader`` key (default ``huggingface``).

    Example::

        @hookimpl
        def tuneforge_model_loaders():
            return [ModelLoaderSpec(name="my-loader", description="...", load=load)]
    """


@hookspec
def tuneforge_quantizers() -> Iterable[QuantizerSpec]:
    """Quantizers, selected with ``quantization_method`` when ``quantization_bit`` is set.

    Example::

        @hookimpl
        def tuneforge_quantizers():
            return [QuantizerSpec(name="my-quant", description="...", bits=(4, 8), load_kwargs=kw)]
    """


@hookspec
def tuneforge_methods() -> Iterable[MethodSpec]:
    """Fine-tuning methods, selected with ``finetuning_type`` (or a method's own ``flag`` key).

    Example::

        @hookimpl
        def tuneforge_methods():
            return [MethodSpec(name="bitfit", description="train biases only", apply=apply)]
    """


@hookspec
def tuneforge_chat_templates() -> Iterable[ChatTemplateSpec]:
    """Chat templates, selected with the ``template`` key.

    Example::

        @hookimpl
        def tuneforge_chat_templates():
            return [ChatTemplateSpec(name="mychat", description="...", definition={...})]
    """


@hookspec
def tuneforge_dataset_formats() -> Iterable[DatasetFormatSpec]:
    """Dataset formats, selected by ``formatting`` in dataset_info.json.

    Example::

        @hookimpl
        def tuneforge_dataset_formats():
            return [DatasetFormatSpec(name="myformat", description="...", convert=convert)]
    """


@hookspec
def tuneforge_stages() -> Iterable[StageSpec]:
    """Training stages, selected with the ``stage`` key.

    Example::

        @hookimpl
        def tuneforge_stages():
            return [StageSpec(name="mystage", description="...", run=run)]
    """


@hookspec
def tuneforge_reward_functions() -> Iterable[RewardFunctionSpec]:
    """Reward functions for the stages that score generated replies (grpo, ppo), selected by name in
    ``reward_funcs``.

    Example::

        @hookimpl
        def tuneforge_reward_functions():
            return [RewardFunctionSpec(name="short", description="...", score=score)]
    """


@hookspec
def tuneforge_inference_engines() -> Iterable[InferenceEngineSpec]:
    """Inference engines for chat, api and predict, selected with the ``infer_backend`` key.

    Example::

        @hookimpl
        def tuneforge_inference_engines():
            return [InferenceEngineSpec(name="my-engine", description="...", create=create)]
    """


@hookspec
def tuneforge_commands() -> Iterable[CommandSpec]:
    """`tuneforge` verbs (``tuneforge NAME ...``). The core verbs (train, check, plan, data, plugins,
    show, env, version) cannot be replaced; two plugins with one verb name are an error naming both.

    ``register(parser)`` adds the verb's arguments to the sub-parser the core made, and must not import
    heavy modules (it runs for `tuneforge --help`); ``run(args)`` does the work. Example::

        def register(parser):
            parser.add_argument("name", nargs="?", default="world")

        def run(args):
            print(f"hello, {args.name}")

        @hookimpl
        def tuneforge_commands():
            return [CommandSpec(name="hello", description="say hello", register=register, run=run)]
    """


# --- detection: the first plugin with an answer wins; built-ins answer last --------------------


@hookspec(firstresult=True)
def tuneforge_detect_template(tokenizer: Any) -> str | None:
    """Name the chat template that fits this tokenizer, or return None to let others answer.

    Called when the config leaves ``template`` unset. Example::

        @hookimpl
        def tuneforge_detect_template(tokenizer):
            if "<|my_turn|>" in (tokenizer.chat_template or ""):
                return "mychat"
    """


@hookspec(firstresult=True)
def tuneforge_detect_dataset_format(path: str, row: dict) -> str | None:
    """Name the dataset format of a data file from its path and first row, or return None.

    Called when a data file is named directly in the config without a ``formatting``. Example::

        @hookimpl
        def tuneforge_detect_dataset_format(path, row):
            if "dialogue" in row:
                return "myformat"
    """


# --- lifecycle: called by the core at fixed points of a run -------------------------------------


@hookspec
def tuneforge_model_ready(ctx: Any, model: Any, tokenizer: Any) -> None:
    """The model is loaded, quantized and wrapped by its method, and about to be trained or served.

    Example::

        @hookimpl
        def tuneforge_model_ready(ctx, model, tokenizer):
            print(sum(p.numel() for p in model.parameters() if p.requires_grad))
    """


@hookspec
def tuneforge_trainer_created(ctx: Any, trainer: Any) -> None:
    """A stage built its trainer; plugins may add callbacks. Example::

        @hookimpl
        def tuneforge_trainer_created(ctx, trainer):
            trainer.add_callback(MyCallback())
    """


@hookspec
def tuneforge_run_end(ctx: Any, metrics: dict) -> None:
    """A run finished and its outputs are written. Example::

        @hookimpl
        def tuneforge_run_end(ctx, metrics):
            notify(f"done: {metrics.get('train_loss')}")
    """


#: Registration hook name -> plugin kind (see tuneforge.specs.KINDS).
REGISTRATION_HOOKS: dict[str, str] = {
    "tuneforge_model_loaders": "loader",
    "tuneforge_quantizers": "quantizer",
    "tuneforge_methods": "method",
    "tuneforge_chat_templates": "template",
    "tuneforge_dataset_formats": "format",
    "tuneforge_stages": "stage",
    "tuneforge_reward_functions": "reward",
    "tuneforge_inference_engines": "engine",
    "tuneforge_commands": "command",
}
