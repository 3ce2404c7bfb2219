"""From a config file to a Plan: which plugin provides each part of the run.

``prepare()`` is what `tuneforge check` and every command that runs something call first. It reads,
validates and resolves the whole config before torch is imported, and raises one ConfigError with
every problem it found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config.loader import parse_overrides, read_config_file
from .config.adapters import adapter_problems, apply_adapter_folder
from .config.hubs import resolve_hub_model
from .config.model import Config
from .config.model_checks import model_file_checks
from .config.validate import declared_defaults, relation_problems, relation_warnings, validate_values
from .data.registry import DatasetAttr, data_problems, resolve_datasets
from .config.refusals import refusal_problems
from .versions import version_problems, version_warnings
from .errors import ConfigError, PluginError, Problem
from .plugin_helpers import checkpoint_quantization, quant_method, quantized_by
from .plugin_manager import PluginManager, SpecEntry, split_names
from .train.checks import distributed_problems


@dataclass
class DatasetPlan:
    attr: DatasetAttr
    format: SpecEntry | None  # None: detected from the file at load time


@dataclass
class Plan:
    stage: SpecEntry
    method: SpecEntry
    loader: SpecEntry
    quantizer: SpecEntry | None
    template: SpecEntry | None  # None: inferred from the tokenizer at run time
    datasets: list[DatasetPlan] = field(default_factory=list)
    eval_datasets: list[DatasetPlan] = field(default_factory=list)
    #: The checkpoint is already quantized (its config.json has a quantization_config); the quantizer,
    #: if any, is the plugin that recognised it.
    prequantized: str | None = None
    #: The inference engine (``infer_backend``); planned only for chat, api and predictions.
    engine: SpecEntry | None = None
    #: The reward functions named in ``reward_funcs``, in that order; planned only for a stage whose
    #: spec says ``uses_rewards``.
    rewards: list[SpecEntry] = field(default_factory=list)

    def entries(self) -> list[SpecEntry]:
        out = [self.loader, self.quantizer, self.method, self.template, self.stage, self.engine, *self.rewards]
        out += [d.format for d in self.datasets + self.eval_datasets]
        return [e for e in out if e is not None]

    def describe(self) -> list[tuple[str, str, str]]:
        """(role, name, provider) rows for printing."""
        rows = [("loader", self.loader.name, self.loader.provider)]
        if self.prequantized:
            who = self.quantizer.name if self.quantizer else "no installed plugin recognises it"
            rows.append(("quantizer", f"checkpoint already quantized ({self.prequantized}); {who}", self.quantizer.provider if self.quantizer else "-"))
        else:
            rows.append(("quantizer", self.quantizer.name, self.quantizer.provider) if self.quantizer else ("quantizer", "none", "-"))
        rows.append(("method", self.method.name, self.method.provider))
        if self.template:
            rows.append(("template", self.template.name, self.template.provider))
        else:
            rows.append(("template", "(inferred from the tokenizer at run time)", "-"))
        for label, plans in (("dataset", self.datasets), ("eval_dataset", self.eval_datasets)):
            for d in plans:
                fmt = f"{d.format.name} [{d.format.provider}]" if d.format else "format detected from the file"
                rows.append((label, f"{d.attr.name} ({d.attr.source}: {d.attr.path})", fmt))
        rows.append(("stage", self.stage.name, self.stage.provider))
        rows += [("reward", r.name, r.provider) for r in self.rewards]
        if self.engine is not None:
            rows.append(("engine", self.engine.name, self.engine.provider))
        return rows


@dataclass
class Prepared:
    config: Config
    plan: Plan
    manager: PluginManager
    warnings: list[str]


def prepare(
    path: str | Path | None,
    overrides: list[str] = (),
    *,
    manager: PluginManager | None = None,
    blocked: list[str] = (),
    require: tuple[str, ...] = ("model_name_or_path",),
    inference: bool = False,
    confine_data: bool = False,
    reads_data: bool = True,
) -> Prepared:
    """Read, validate and resolve a config. ``inference=True`` (chat, api, predict) also plans the
    inference engine selected by ``infer_backend``. ``confine_data=True`` (the web UI) refuses data
    files outside ``dataset_dir``. ``reads_data=False`` (plan, export: verbs that read no rows) does not
    ask a training config for its data."""
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path is not None:
        raw, sources = read_config_file(path)
    over, over_sources, problems = parse_overrides(list(overrides))
    raw.update(over)
    sources.update(over_sources)

    if manager is None:
        manager = PluginManager(blocked=[*blocked, *split_names(raw.get("disable_plugins"))])
    values, value_problems = validate_values(raw, sources, manager)
    problems += value_problems
    config = Config(values, declared_defaults(manager), sources, Path(path) if path else None)
    problems += refusal_problems(config)  # engines and hardware this version cannot use, said by name
    problems += version_problems()  # required libraries outside the tested range (DISABLE_VERSION_CHECK=1: warned)
    problems += resolve_hub_model(config)  # USE_MODELSCOPE_HUB / USE_OPENMIND_HUB: the model's local folder
    problems += apply_adapter_folder(config)  # adapter_folder: the subfolder of each adapter

    for key in require:
        if config.get(key) in (None, "") and raw.get(key) in (None, ""):  # a rejected value is named already
            problems.append(Problem(key, "is required"))

    problems += relation_problems(config, needs_data=reads_data and not inference)
    plan, plan_problems = resolve_plan(config, manager, inference=inference, confine_data=confine_data)
    problems += plan_problems
    problems += data_problems(config, plan.stage.spec.data_kind if plan is not None else None)
    if plan is not None:
        problems += _media_problems(plan, config, manager)
    model_problems, model_warnings = model_file_checks(config, manager)
    problems += model_problems
    if plan is not None:
        problems += _data_kind_problems(config, plan.stage)
    problems += [Problem("deepspeed", msg, config.where("deepspeed")) for msg in distributed_problems(config)]
    problems += adapter_problems(config, recognised=lambda path: any(
        e.spec.adapter is not None and e.status == "active" and e.spec.adapter.is_adapter_dir(path)
        for e in manager.entries("method")))
    if plan is not None:
        problems += _quantized_weight_problems(config, plan, manager)
        for entry in plan.entries():
            problems += [Problem(f"{entry.kind} {entry.name}", msg) for msg in manager.validate(entry, config, plan)]
    if problems:
        raise ConfigError(sorted(problems, key=_line_of))
    warnings = _warnings(config, plan, manager) + relation_warnings(config) + model_warnings + version_warnings()
    if plan.template is not None and getattr(plan.template.spec, "notes", None) is not None:
        warnings += [f"template {plan.template.name}: {note}" for note in plan.template.spec.notes(config)]
    from .data.media import processor_key_warnings  # image_do_pan_and_scan / crop_to_patches that do nothing

    warnings += processor_key_warnings(config, plan.template.name if plan.template else None,
                                       getattr(plan.template.spec, "media", None) if plan.template else None)
    return Prepared(config, plan, manager, warnings)


def _media_problems(plan, config, manager) -> list[Problem]:
    """A media column needs a template with a media handler: never dropped silently (issue 17)."""
    from .data.media import media_columns, text_only_message

    template = plan.template
    media = getattr(template.spec, "media", None) if template is not None else None
    problems = []
    takers = ", ".join(e.name for e in manager.entries("stage") if getattr(e.spec, "takes_media", False)) or "none"
    for dataset in plan.datasets + plan.eval_datasets:
        for column in media_columns(dataset.attr):
            if media is None or column not in media.modalities:
                message = text_only_message(dataset.attr, column, template.name if template else None, config,
                                            takes=getattr(media, "modalities", ()))
                problems.append(Problem("dataset", message))
            elif not plan.stage.spec.takes_media:
                problems.append(Problem("dataset", f"dataset '{dataset.attr.name}' has {column}, but stage "
                                        f"'{plan.stage.name}' does not train on media yet (stages that do: {takers}); "
                                        f"its {column} would be dropped"))
    videos = any("videos" in media_columns(d.attr) for d in plan.datasets + plan.eval_datasets)
    if config.get("use_audio_in_video") and videos and media is not None and "audios" not in media.modalities:
        problems.append(Problem("use_audio_in_video", f"template '{template.name}' takes {' and '.join(media.modalities)}, "
                                "not audios: the videos' sound would be dropped. Use a template that takes videos with "
                                "their sound (e.g. template: qwen2_omni), or set use_audio_in_video: false",
                                config.where("use_audio_in_video")))
    return problems


def _line_of(problem: Problem) -> tuple[int, int]:
    """Problems read in file order: those with a line first, by line; the rest after."""
    head, _, line = problem.where.rpartition(":")
    return (0, int(line)) if head and line.isdigit() else (1, 0)


def _select(manager: PluginManager, kind: str, key: str, config: Config, problems: list[Problem], name: str | None = None) -> SpecEntry | None:
    name = config.get(key) if name is None else name
    try:
        entry = manager.entry(kind, str(name), key=key)
        manager.get(kind, str(name), key=key)
        return entry
    except PluginError as exc:
        problems.append(Problem(key, str(exc), config.where(key)))
        return None


def resolve_plan(config: Config, manager: PluginManager, *, inference: bool = False,
                 confine_data: bool = False) -> tuple[Plan | None, list[Problem]]:
    problems: list[Problem] = []
    stage = _select(manager, "stage", "stage", config, problems)
    # A method's own flag (LLaMA-Factory's use_galore: true) selects it over finetuning_type.
    flagged = [e for e in manager.entries("method") if e.spec.flag and config.get(e.spec.flag)]
    if flagged:
        method = _select(manager, "method", flagged[0].spec.flag, config, problems, name=flagged[0].name)
        flag = flagged[0].spec.flag
        others = [e.spec.flag for e in flagged[1:] if e.spec.flag != flag]
        if others:
            problems.append(Problem(flag, f"{flag} cannot be combined with {', '.join(others)}: each selects a method; "
                                          "choose one", config.where(flag)))
        chosen = config.get("finetuning_type") if config.is_set("finetuning_type") else None
        chosen_entry = next((e for e in manager.entries("method") if e.name == chosen), None)
        if chosen_entry is not None and chosen_entry.spec.flag and chosen_entry.name != flagged[0].name:
            problems.append(Problem("finetuning_type", f"finetuning_type: {chosen} and {flag}: true select two "
                                                       "methods; choose one", config.where("finetuning_type")))
    else:
        method = _select(manager, "method", "finetuning_type", config, problems)
    loader = _select(manager, "loader", "model_loader", config, problems)
    quantizer = None
    prequantized = checkpoint_quantization(config.model_name_or_path)
    if prequantized is not None:
        quantized_with = quant_method(prequantized)
        if config.quantization_bit is not None:
            problems.append(Problem("quantization_bit", f"{config.model_name_or_path} is already quantized ({quantized_with}); remove quantization_bit (and quantization_method) to train on it as it is", config.where("quantization_bit")))
        for entry in manager.entries("quantizer"):
            if entry.spec.recognizes is not None and entry.spec.recognizes(prequantized):
                quantizer = entry
                if entry.status != "active":
                    problems.append(Problem("model_name_or_path", f"the checkpoint is quantized with {quantized_with}; quantizer '{entry.name}' is {entry.status}"))
                break
    elif config.quantization_bit is not None:
        quantizer = _select(manager, "quantizer", "quantization_method", config, problems)
        if quantizer and quantizer.spec.bits and config.quantization_bit not in quantizer.spec.bits:
            problems.append(Problem("quantization_bit", f"{quantizer.name} supports {', '.join(map(str, quantizer.spec.bits))} bits, not {config.quantization_bit}", config.where("quantization_bit")))
    template = _select(manager, "template", "template", config, problems) if config.template else None
    tool_format = config.get("tool_format")
    if tool_format:
        from .data.template import tool_format_template

        tool_entry = _select(manager, "template", "tool_format", config, problems, name=tool_format_template(manager, str(tool_format)))
        if tool_entry is not None and tool_entry.spec.build is not None:
            problems.append(Problem("tool_format", f"'{tool_format}' is not a tool format: name a template whose tool format to use "
                                    "(default, glm4, llama3, mistral, qwen, ...)", config.where("tool_format")))
        elif template is not None and template.spec.build is not None:
            problems.append(Problem("tool_format", f"template '{template.name}' renders tools with the tokenizer's own chat template; "
                                    "remove tool_format or choose a built-in template", config.where("tool_format")))

    def datasets(key: str) -> list[DatasetPlan]:
        names = split_names(config.get(key))
        attrs, data_problems = resolve_datasets(names, config.dataset_dir, key, confine=confine_data)
        problems.extend(data_problems)
        plans = []
        for attr in attrs:
            fmt = None
            if attr.formatting is not None:
                try:
                    manager.get("format", attr.formatting, key="formatting")
                    fmt = manager.entry("format", attr.formatting, key="formatting")
                except PluginError as exc:
                    problems.append(Problem(key, f"dataset '{attr.name}': {exc}"))
            plans.append(DatasetPlan(attr, fmt))
        return plans

    train_sets = datasets("dataset")
    eval_sets = datasets("eval_dataset")
    engine = _select(manager, "engine", "infer_backend", config, problems) if inference else None
    rewards = []
    if stage is not None and stage.spec.uses_rewards:
        names = split_names(config.get("reward_funcs"))
        rewards = [_select(manager, "reward", "reward_funcs", config, problems, name=n) for n in dict.fromkeys(names)]
    if None in (stage, method, loader, *rewards) or (inference and engine is None):
        return None, problems
    plan = Plan(stage, method, loader, quantizer, template, train_sets, eval_sets, rewards=rewards)
    plan.engine = engine
    if prequantized is not None:
        plan.prequantized = quant_method(prequantized)
    return plan, problems


def _data_kind_problems(config: Config, stage: SpecEntry) -> list[Problem]:
    """A stage's own data kind: it must say how its rows are built; they are not packed."""
    from .specs import BUILTIN_DATA_KINDS

    spec = stage.spec
    if spec.data_kind in BUILTIN_DATA_KINDS:
        return []
    if spec.data is None:
        return [Problem("stage", f"stage '{stage.name}' ({stage.provider}) trains on '{spec.data_kind}' rows, which "
                                 f"tuneforge does not build ({', '.join(BUILTIN_DATA_KINDS)}), and its spec has no "
                                 "DataKind (StageSpec.data) saying how to build them", config.where("stage"))]
    if config.packing or config.neat_packing:
        return [Problem("packing", f"is not supported for '{spec.data_kind}' rows (stage {stage.name})",
                        config.where("packing"))]
    return []


def _quantized_weight_problems(config: Config, plan: Plan, manager: PluginManager) -> list[Problem]:
    """What cannot run on quantized base weights, decided from the specs the plan chose: a method that
    trains the base weights, and merging adapters into them (training on merged adapters, or export)."""
    source = quantized_by(config, plan)
    if source is None:
        return []
    unquantize = ("set model_name_or_path to the original full-precision model" if plan.prequantized
                  else "remove quantization_bit")
    out = []
    method = plan.method
    if method.spec.trains_base_weights:
        flag = method.spec.flag if method.spec.flag and config.get(method.spec.flag) else None
        what = f"{flag}: true" if flag else f"finetuning_type: {method.name}"
        instead = _adapter_method(config, manager)
        out.append(Problem(f"method {method.name}",
                           f"{what} updates the base weights, which are quantized ({source}) and cannot be trained; "
                           f"train adapters on them instead" + (f" (Q{instead.spec.label}: finetuning_type: "
                                                                 f"{instead.name})" if instead else "")
                           + f", or {unquantize}"))
    adapters = split_names(config.get("adapter_name_or_path"))
    where = config.where("adapter_name_or_path")
    if config.get("export_dir") and adapters:
        out.append(Problem("adapter_name_or_path",
                           f"export merges the adapter into the base model, which cannot be done on quantized weights "
                           f"({source}): export from the unquantized base instead ({unquantize}); set "
                           "export_quantization_bit to quantize the merged model", where))
    elif len(adapters) > 1 or (adapters and config.get("create_new_adapter")):
        merged = adapters if config.get("create_new_adapter") else adapters[:-1]
        out.append(Problem("adapter_name_or_path",
                           f"merging {', '.join(merged)} into quantized weights ({source}) is not supported; "
                           "merge the adapters into the unquantized base first (tuneforge export without "
                           "quantization_bit), then train on the merged model", where))
    return out


def _adapter_method(config: Config, manager: PluginManager) -> SpecEntry | None:
    """The method to suggest for quantized weights: the default method when it trains adapters, else
    the first active method that does."""
    from .config.validate import declared_defaults

    default = declared_defaults(manager).get("finetuning_type")
    candidates = sorted(manager.entries("method"), key=lambda e: e.name != default)
    return next((e for e in candidates if not e.spec.trains_base_weights and e.spec.adapter is not None
                 and e.status == "active"), None)


def _warnings(config: Config, plan: Plan, manager: PluginManager) -> list[str]:
    """Settings that do nothing in this run: said out loud, never dropped silently."""
    from .config.keys import CORE_KEYS

    out = []
    selected = {id(e.spec) for e in plan.entries()}
    owners = manager.owned_keys()
    for name, value in config.values.items():
        core_key = CORE_KEYS.get(name)
        if core_key is not None and not core_key.effective and value not in (None, core_key.default):
            out.append(f"{name} ({config.where(name)}) is accepted for LLaMA-Factory compatibility but has no effect in this version")
        if name in owners and not any(id(e.spec) in selected for e in owners[name]):
            providers = ", ".join(f"{e.kind} '{e.name}'" for e in owners[name])
            out.append(f"{name} ({config.where(name)}) belongs to {providers}, which this run does not use")
        for entry in owners.get(name, []):
            if id(entry.spec) in selected:
                key = next(k for k in entry.spec.keys if k.name == name)
                if not key.effective and value not in (None, key.default):
                    out.append(f"{name} ({config.where(name)}) is accepted by {entry.kind} '{entry.name}' but has no effect in this version")
    return out
