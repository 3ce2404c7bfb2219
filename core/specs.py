"""Typed spec objects that plugins hand to the core.

A registration hook returns these frozen records instead of registering callbacks as a side effect
of import: the core can list, validate and document a plugin (its keys, its optional dependencies)
without running any of its heavy code. The work itself sits behind plain callables on the spec,
which the plugin is free to implement with lazy imports.

Nothing here imports torch: `tuneforge plugins` and `tuneforge check` must stay fast.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

#: The plugin kinds, in the order the pipeline uses them (inference engines serve what training made).
#: Keys are the words users type (`tuneforge plugins --kind method`); values name the config key
#: that selects one, if any.
KINDS: dict[str, str | None] = {
    "loader": "model_loader",
    "quantizer": "quantization_method",
    "method": "finetuning_type",
    "template": "template",
    "format": "formatting",
    "stage": "stage",
    "reward": "reward_funcs",
    "engine": "infer_backend",
}

_MISSING = object()


@dataclass(frozen=True)
class ConfigKey:
    """One config key a plugin (or the core) owns.

    ``type`` is a python type or a tuple of types the value may have (``int`` is accepted where
    ``float`` is expected; numeric strings are converted, as Hugging Face's argument parser does).
    ``effective=False`` marks a key that is accepted so LLaMA-Factory configs parse, but that this
    version does not act on yet: `check` warns when such a key is set, instead of dropping it silently.

    The limits below are checked by `tuneforge check` for every key, the core's and every plugin's, so
    a bad value is named before anything loads instead of failing deep inside a library:

    - ``min`` / ``max``: the numeric range (inclusive; ``min_open`` / ``max_open`` exclude the bound,
      as in ``learning_rate > 0``); ``special`` lists values allowed outside it (``max_steps: -1``).
    - ``path``: what a string value names on disk: ``"dir"`` / ``"file"`` must exist as one,
      ``"exists"`` either, ``"output"`` may be missing but must not be a file (nor lie under one),
      ``"model"`` a local model folder (config.json) and ``"adapter"`` an existing path (each of a comma
      list), both only when the value looks like a path: a hub id such as ``org/name`` stays allowed.
      ``special`` values (``dataset_dir: ONLINE``) are not paths.
    - ``excludes``: keys that cannot be set together with this one (both truthy).
    """

    name: str
    type: Any
    default: Any = None
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    effective: bool = True
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    special: tuple[Any, ...] = ()
    path: str | None = None
    excludes: tuple[str, ...] = ()

    def type_name(self) -> str:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        return " | ".join(getattr(t, "__name__", str(t)) for t in types)

    def range_text(self) -> str:
        """The allowed range in words ("> 0", ">= 1 or -1", "between 0 and 1"), "" when unbounded."""
        low = None if self.min is None else f"{'>' if self.min_open else '>='} {_num(self.min)}"
        high = None if self.max is None else f"{'<' if self.max_open else '<='} {_num(self.max)}"
        text = " and ".join(part for part in (low, high) if part)
        if text and self.special:
            text += " (or " + ", ".join(_num(v) for v in self.special) + ")"
        return text

    def range_problem(self, value: Any) -> str | None:
        """Why a numeric ``value`` is out of range, or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value in self.special:
            return None
        if value != value:  # NaN passes no comparison
            return f"must be a number, got {value}"
        low_bad = self.min is not None and (value <= self.min if self.min_open else value < self.min)
        high_bad = self.max is not None and (value >= self.max if self.max_open else value > self.max)
        if low_bad or high_bad:
            return f"must be {self.range_text()}, got {_num(value)}"
        return None


def _num(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() and abs(value) < 1e15 else str(value)


@dataclass(frozen=True)
class Requirement:
    """An optional module a plugin needs, with the command that installs it."""

    module: str
    pip: str
    min_version: str | None = None

    def missing(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is None
        except (ImportError, ValueError):
            return True


@dataclass(frozen=True)
class PluginSpec:
    """What every plugin kind has in common."""

    kind: ClassVar[str] = ""

    name: str
    description: str
    keys: tuple[ConfigKey, ...] = ()
    requires: tuple[Requirement, ...] = ()
    #: Reasons the plugin cannot run on this machine at all (e.g. "needs a CUDA GPU"), decided by the
    #: plugin without importing heavy modules. A non-empty value makes its status `unavailable`.
    unavailable_reason: Callable[[], str | None] | None = None
    #: Extra validation run by `check` once the whole config is known: returns problems as strings.
    validate: Callable[[Any], list[str]] | None = None

    def missing_requirements(self) -> list[Requirement]:
        return [r for r in self.requires if r.missing()]


@dataclass(frozen=True)
class ModelLoaderSpec(PluginSpec):
    """Loads the model and tokenizer. ``load(ctx)`` returns ``(model, tokenizer)``."""

    kind: ClassVar[str] = "loader"
    load: Callable[[Any], tuple[Any, Any]] | None = None
    load_tokenizer: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class QuantizerSpec(PluginSpec):
    """Quantizes weights at or after load.

    ``load_kwargs(ctx)`` returns extra ``from_pretrained`` keyword arguments (e.g. a
    ``quantization_config``); ``after_load(ctx, model)`` may rewrite the loaded model and returns it.
    ``recognizes(quantization_config)`` says whether a checkpoint's own ``quantization_config`` (from
    its config.json) was written by this method, so an already-quantized model is planned without any key.
    ``export_quantize(ctx, model_dir, out_dir)`` quantizes a saved model for `tuneforge export`.
    """

    kind: ClassVar[str] = "quantizer"
    bits: tuple[int, ...] = ()
    load_kwargs: Callable[[Any], dict] | None = None
    after_load: Callable[[Any, Any], Any] | None = None
    recognizes: Callable[[dict], bool] | None = None
    export_quantize: Callable[[Any, str, str], None] | None = None


@dataclass(frozen=True)
class MethodSpec(PluginSpec):
    """A fine-tuning method: decides which parameters train and how.

    ``apply(ctx, model)`` returns the model to train (e.g. wrapped in a PEFT adapter).
    ``create_optimizer(ctx, model, training_args)`` optionally returns an optimizer (GaLore-style
    methods); ``None`` leaves the trainer's default.
    ``save(ctx, model, output_dir)`` optionally replaces the stage's default saving.
    ``flag`` names a boolean key that selects this method in LLaMA-Factory configs (``use_galore``).
    """

    kind: ClassVar[str] = "method"
    apply: Callable[[Any, Any], Any] | None = None
    create_optimizer: Callable[[Any, Any, Any], Any] | None = None
    flag: str | None = None


@dataclass(frozen=True)
class ChatTemplateSpec(PluginSpec):
    """A chat template. ``definition`` is the plain data the renderer uses (see templates/*.yaml)."""

    kind: ClassVar[str] = "template"
    definition: dict = field(default_factory=dict)
    #: (display name, hub id) of models this template serves: the web UI's model-name list, so a
    #: template plugin brings its known models along.
    models: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DatasetFormatSpec(PluginSpec):
    """A dataset format such as alpaca or sharegpt.

    ``convert(row, attr)`` turns one raw row into the common example shape, a dict with ``messages``
    (list of {"role", "content"}), optional ``system``, ``tools``, ``chosen``/``rejected``, ``kto_tag``
    or ``text``. It raises :class:`tuneforge.errors.RowError` naming the field and reason on a bad row.
    """

    kind: ClassVar[str] = "format"
    convert: Callable[[dict, Any], dict] | None = None


#: The selection key of reward functions, owned by every stage that uses them (``uses_rewards``).
REWARD_FUNCS_KEY = ConfigKey(
    "reward_funcs", (str, list), None,
    "Reward functions that score each generated reply (comma list; `tuneforge plugins --kind reward`).",
)


@dataclass(frozen=True)
class StageSpec(PluginSpec):
    """A training stage (pt, sft, dpo, ...). ``run(ctx)`` trains and returns a metrics dict.

    ``data_kind`` says which rows the stage consumes ("text", "supervised", "pairwise", "kto", ...).
    """

    kind: ClassVar[str] = "stage"
    run: Callable[[Any], dict] | None = None
    data_kind: str = "supervised"
    #: The stage scores generated replies with reward-function plugins: it owns the ``reward_funcs`` key
    #: (added to its keys), and the plan resolves those names (unknown ones are `check` errors) into
    #: ``ctx.plan.rewards``.
    uses_rewards: bool = False

    def __post_init__(self):
        if self.uses_rewards and all(k.name != REWARD_FUNCS_KEY.name for k in self.keys):
            object.__setattr__(self, "keys", (REWARD_FUNCS_KEY, *self.keys))


@dataclass(frozen=True)
class RewardFunctionSpec(PluginSpec):
    """A reward function for the stages that learn from scored generations (grpo, ppo), selected by
    name in ``reward_funcs``.

    ``score(ctx, prompts, completions, **columns) -> list[float]`` returns one reward per completion.
    ``prompts[i]`` is the prompt as the chat template rendered it (special-token markup included) and
    ``completions[i]`` the reply the model wrote for it, as text. ``columns`` holds per-row dataset
    fields, one list entry per completion, e.g. ``reference``: the dataset's own reply ("" when it has
    none). A function must accept and ignore columns it does not know, so stages can add more.
    """

    kind: ClassVar[str] = "reward"
    score: Callable[..., list[float]] | None = None


@dataclass(frozen=True)
class InferenceEngineSpec(PluginSpec):
    """An inference engine for `tuneforge chat`, `tuneforge api` and predictions (``infer_backend``).

    ``create(ctx)`` returns the engine: an object with the methods of
    :class:`tuneforge.chat.engine.InferenceEngine` (``stream``, ``generate``, ``generate_batch``). It
    loads the planned model itself, or serves ``ctx.model`` when the run already holds one.
    """

    kind: ClassVar[str] = "engine"
    create: Callable[[Any], Any] | None = None


SPEC_TYPES: dict[str, type[PluginSpec]] = {
    cls.kind: cls
    for cls in (ModelLoaderSpec, QuantizerSpec, MethodSpec, ChatTemplateSpec, DatasetFormatSpec, StageSpec,
                RewardFunctionSpec, InferenceEngineSpec)
}
