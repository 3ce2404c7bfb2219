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
    "command": None,
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
    #: Extra validation run by `check` once the whole config is known: ``validate(config, plan)``
    #: returns problems as strings. ``plan`` is the resolved :class:`tuneforge.plan.Plan`: the method,
    #: quantizer, stage and template entries chosen for this run (``plan.method.spec`` ...), so a plugin
    #: asks the plan what was chosen instead of re-deriving it from config names.
    validate: Callable[[Any, Any], list[str]] | None = None

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
    #: For `tuneforge plan`: ``bytes_per_weight(bits, config) -> (bytes, how)``, the bytes one quantized
    #: linear weight takes with its constants (scales, zero points), and a few words on how they were
    #: counted. ``None``: ``bits / 8`` plus two fp16 constants per group of 64, said to be approximate.
    bytes_per_weight: Callable[[int, Any], tuple[float, str]] | None = None
    #: Training on these weights casts every parameter the quantizer leaves unquantized (norms,
    #: embeddings) to fp32 (PEFT's ``prepare_model_for_kbit_training``), unless ``pure_bf16``: the
    #: planner counts them at 4 bytes and the activations in fp32 (the residual stream starts fp32).
    upcasts_unquantized: bool = False


@dataclass(frozen=True)
class AdapterSpec:
    """How a method's adapters live on disk and join a model: what `export`, reference and reward
    models and `check` need from an adapter method, without knowing which library it uses.

    ``is_adapter_dir(path) -> bool``: whether a folder holds an adapter of this method (the test that
      picks the method for ``ref_model_adapters``, ``reward_model`` ... among the installed ones).
    ``load(model, path, trainable) -> model``: ``model`` with the adapter in ``path`` attached, still
      separate from the base weights (trainable when continuing training).
    ``merge(model) -> model``: the model with every attached adapter folded into its weights, as a
      plain model class that ``save_pretrained`` writes and ``AutoModelForCausalLM`` loads.
    ``disabled(model)``: a context manager under which the model computes as its base alone (the
      implicit reference of dpo/kto and the base logits `export` compares with); ``None`` if it cannot.
    ``check_trained(path) -> str | None``: why the saved adapter cannot change the model (all-zero
      up-projection: an untrained adapter), or ``None``. `export` refuses such an adapter up front.

    The method's ``apply(ctx, model)`` loads ``adapter_name_or_path`` itself (through ``load``/``merge``
    or otherwise) and its saving is the model's own ``save_pretrained`` (the trainer calls it), which
    must write only the adapter to the output folder.
    """

    is_adapter_dir: Callable[[str], bool]
    load: Callable[[Any, str, bool], Any]
    merge: Callable[[Any], Any]
    disabled: Callable[[Any], Any] | None = None
    check_trained: Callable[[str], str | None] | None = None


@dataclass(frozen=True)
class TrainablePlan:
    """What `tuneforge plan` needs to know about the parameters a method trains (see docs/planner.md).

    ``params``: parameters that train over the run; ``with_grads``: those holding a gradient (and
    optimizer state) at once (default ``params``); ``head``: trainable parameters of the output head,
    whose gradient is the first of backward; ``largest``: the largest trainable tensor (the optimizer
    step's scratch; default the model's largest). ``activation_values`` / ``activation_bytes``: what
    the method adds to each decoder layer's saved activations per token, in values of the compute
    dtype and in plain bytes (LoRA: the rank-r intermediate, dropout masks). ``notes``: said with the plan.
    """

    params: int
    with_grads: int | None = None
    head: int = 0
    largest: int | None = None
    activation_values: float = 0.0
    activation_bytes: float = 0.0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class MethodSpec(PluginSpec):
    """A fine-tuning method: decides which parameters train and how.

    ``apply(ctx, model)`` returns the model to train (e.g. wrapped in a PEFT adapter).
    ``create_optimizer(ctx, model, training_args)`` optionally returns an optimizer (GaLore-style
    methods); ``None`` leaves the trainer's default.
    ``flag`` names a boolean key that selects this method in LLaMA-Factory configs (``use_galore``).

    What the core and other plugins ask of a method (instead of keeping lists of method names):

    ``trains_base_weights``: the method updates the model's own weights (full, freeze, GaLore, ...), so
      the core refuses it on quantized weights, and dpo/kto keep a frozen reference copy of the model.
      ``False``: the base stays frozen and something beside it trains (adapters).
    ``trains_added_modules``: a module a stage adds after ``apply`` (rm's and ppo's value head) trains
      too; ``False`` for a method that picks its trainable blocks itself among the model's own (BAdam).
    ``keeps_trainable_dtype``: trainable parameters stay in the compute dtype instead of being upcast
      to fp32 (the method keeps its own fp32 copies, as BAdam does).
    ``adapter``: how its adapters are loaded, merged and checked (:class:`AdapterSpec`); ``None`` for a
      method that changes the model's weights in place.
    ``base_method(config) -> name``: another method whose rule decides which parameters train, for an
      optimizer-level method over full or freeze tuning (GaLore: ``full`` or ``freeze``).
    ``plan_trainable(shape, config) -> TrainablePlan``: the planner's count of what trains, from a
      :class:`tuneforge.planner.ModelShape` (parameter names and sizes, no weights). ``None`` (and no
      ``base_method``): `tuneforge plan` counts every parameter as trainable and says so.
    ``plan_optimizer_state(shape, config, trainable, bytes_per_param, optimizer) -> (bytes, how) | None``:
      the optimizer state when the method changes it (projected or block-wise state), given the
      ``optim``'s bytes per parameter and how that was counted ("AdamW: 2 states x 4 B"); ``None`` keeps the plain per-parameter rule.
    ``display_name``: how messages and `tuneforge plan` advice name it ("LoRA"); default ``name``.
    """

    kind: ClassVar[str] = "method"
    apply: Callable[[Any, Any], Any] | None = None
    create_optimizer: Callable[[Any, Any, Any], Any] | None = None
    flag: str | None = None
    trains_base_weights: bool = True
    trains_added_modules: bool = True
    keeps_trainable_dtype: bool = False
    adapter: AdapterSpec | None = None
    base_method: Callable[[Any], str] | None = None
    plan_trainable: Callable[[Any, Any], TrainablePlan] | None = None
    plan_optimizer_state: Callable[[Any, Any, TrainablePlan, int, str], tuple[int, str] | None] | None = None
    display_name: str | None = None

    @property
    def label(self) -> str:
        return self.display_name or self.name


@dataclass(frozen=True)
class ChatTemplateSpec(PluginSpec):
    """A chat template. ``definition`` is the plain data the renderer uses (see templates/*.yaml)."""

    kind: ClassVar[str] = "template"
    definition: dict = field(default_factory=dict)
    #: (display name, hub id) of models this template serves: the web UI's model-name list, so a
    #: template plugin brings its known models along.
    models: tuple[tuple[str, str], ...] = ()
    #: ``build(tokenizer)`` returns the renderer, for a template that needs the tokenizer to exist
    #: (``auto`` reads the tokenizer's own Jinja template); None: built from ``definition``.
    build: Callable[[Any], Any] | None = None
    #: ``notes(config)``: what `check` should say about this template for this config (warnings,
    #: not errors), e.g. that the model's own template rewrites earlier turns.
    notes: Callable[[Any], list[str]] | None = None
    #: A :class:`tuneforge.data.media.MediaHandler` for a multimodal template (how ``<image>`` becomes
    #: this model's tokens and inputs); None: text-only, and a dataset with a media column is an error.
    #: A definition's ``media: processor`` + ``media_placeholders`` (docs/multimodal.md) sets it.
    media: Any = None
    #: Other names ``tool_format:`` accepts for this template's tool format (LLaMA-Factory's ``ling``
    #: names bailing_v2's), so a tool format value that is no template name still resolves.
    tool_format_names: tuple[str, ...] = ()

    def __post_init__(self):
        if {"media", "media_placeholders", "media_first"} & set(self.definition):
            from .data.media import media_from_definition

            if self.media is None:
                object.__setattr__(self, "media", media_from_definition(self.name, self.definition))
            object.__setattr__(self, "definition", {k: v for k, v in self.definition.items()
                                                    if k not in ("media", "media_placeholders", "media_first")})


@dataclass(frozen=True)
class DatasetFormatSpec(PluginSpec):
    """A dataset format such as alpaca or sharegpt.

    ``convert(row, attr)`` turns one raw row into the common example shape, a dict with ``messages``
    (list of {"role", "content"}), optional ``system``, ``tools``, ``chosen``/``rejected``, ``kto_tag``
    or ``text``. It raises :class:`tuneforge.errors.RowError` naming the field and reason on a bad row.
    """

    kind: ClassVar[str] = "format"
    convert: Callable[[dict, Any], dict] | None = None


#: The row kinds the core builds itself; a stage may declare any other ``data_kind`` with a :class:`DataKind`.
BUILTIN_DATA_KINDS = ("text", "supervised", "pairwise", "kto", "prompt")


@dataclass(frozen=True)
class DataKind:
    """A kind of training rows a stage defines for itself (``StageSpec.data``), for a ``data_kind``
    the core does not build.

    ``examples``: the built-in kind of examples it is made from ("supervised", "pairwise", "kto" or
    "text"): datasets are checked and converted as for that kind (formats, columns, row errors).
    ``featurize(batch, *, template, tokenizer, settings) -> columns``: a batched ``datasets.map``
    function from ``{"_example": [json text of one example, ...]}`` to feature columns (lists); the
    built-in ones are in ``tuneforge.data.tokenize`` (``supervised_batch`` ...).
    ``collator(pad_token_id, label_pad_token_id) -> callable``: batches the feature rows.
    Rows of a stage's own kind are not packed (`check` refuses ``packing`` for the stage).
    The core caches the features like its own, keyed by the kind's name and the stage's plugin.
    """

    examples: str
    featurize: Callable[..., dict]
    collator: Callable[[int, int], Any]


#: The selection key of reward functions, owned by every stage that uses them (``uses_rewards``).
REWARD_FUNCS_KEY = ConfigKey(
    "reward_funcs", (str, list), None,
    "Reward functions that score each generated reply (comma list; `tuneforge plugins --kind reward`).",
)


@dataclass(frozen=True)
class StageSpec(PluginSpec):
    """A training stage (pt, sft, dpo, ...). ``run(ctx)`` trains and returns a metrics dict.

    ``data_kind`` says which rows the stage consumes: one the core builds ("text", "supervised",
    "pairwise", "kto", "prompt"), or any other name, built as ``data`` (a :class:`DataKind`) says.
    ``pairs_rows``: each example is two sequences in one step (chosen and rejected, or KTO's KL row):
    the planner counts twice the tokens.
    ``needs_reference(config) -> bool``: the stage compares with a frozen reference model (dpo, kto):
    a method that trains the base weights then needs a second copy of the model.
    ``lm_loss``: the loss runs over the vocabulary (False: a value head scores, as in rm).
    ``unplanned``: what the planner does not count for this stage ("its generation and extra
    models"); ``None`` when the formulas model it fully.
    ``takes_media``: the stage feeds each row's media inputs (the collator's ``pixel_values``...) to
    the model, so datasets with images may be used with it (otherwise they are a `check` error).
    """

    kind: ClassVar[str] = "stage"
    run: Callable[[Any], dict] | None = None
    data_kind: str = "supervised"
    data: DataKind | None = None
    pairs_rows: bool = False
    needs_reference: Callable[[Any], bool] | None = None
    lm_loss: bool = True
    unplanned: str | None = None
    takes_media: bool = False
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


@dataclass(frozen=True)
class CommandSpec(PluginSpec):
    """A `tuneforge` verb (``tuneforge NAME ...``), as datasette's and llm's ``register_commands`` add one.

    The core makes the sub-parser (``tuneforge NAME``, with ``description`` as its help line) and hands
    it to ``register(parser)``, which adds the verb's arguments; ``run(args)`` does the work and returns
    the exit status (``None`` means 0). ``args`` also holds the global options (``args.disable_plugin``)
    and the ``key=value`` overrides written after the verb's arguments (``args.overrides``).

    ``register`` runs for every `tuneforge` call, `--help` included: it must not import torch or any
    other heavy module. ``run`` imports what it needs. A TuneforgeError raised by ``run`` is printed as
    ``error: ...`` with exit status 2, like the core verbs' errors.
    """

    kind: ClassVar[str] = "command"
    register: Callable[[Any], None] | None = None
    run: Callable[[Any], int | None] | None = None


SPEC_TYPES: dict[str, type[PluginSpec]] = {
    cls.kind: cls
    for cls in (ModelLoaderSpec, QuantizerSpec, MethodSpec, ChatTemplateSpec, DatasetFormatSpec, StageSpec,
                RewardFunctionSpec, InferenceEngineSpec, CommandSpec)
}
