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
from .config.model import Config
from .config.refusals import refusal_problems
from .config.validate import declared_defaults, validate_values
from .data.registry import DatasetAttr, data_problems, resolve_datasets
from .errors import ConfigError, PluginError, Problem
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
) -> Prepared:
    """Read, validate and resolve a config. ``inference=True`` (chat, api, predict) also plans the
    inference engine selected by ``infer_backend``."""
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

    for key in require:
        if config.get(key) in (None, ""):
            problems.append(Problem(key, "is required"))

    plan, plan_problems = _resolve_plan(config, manager, inference=inference)
    problems += plan_problems
    problems += data_problems(config, plan.stage.spec.data_kind if plan is not None else None)
    problems += [Problem("deepspeed", msg, config.where("deepspeed")) for msg in distributed_problems(config)]
    if plan is not None:
        for entry in plan.entries():
            if entry.spec.validate is not None:
                problems += [Problem(f"{entry.kind} {entry.name}", msg) for msg in entry.spec.validate(config)]
    if problems:
        raise ConfigError(sorted(problems, key=_line_of))
    return Prepared(config, plan, manager, _warnings(config, plan, manager))


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


def _resolve_plan(config: Config, manager: PluginManager, *, inference: bool = False) -> tuple[Plan | None, list[Problem]]:
    problems: list[Problem] = []
    stage = _select(manager, "stage", "stage", config, problems)
    # A method's own flag (LLaMA-Factory's use_galore: true) selects it over finetuning_type.
    flagged = [e for e in manager.entries("method") if e.spec.flag and config.get(e.spec.flag)]
    if flagged:
        method = _select(manager, "method", flagged[0].spec.flag, config, problems, name=flagged[0].name)
    else:
        method = _select(manager, "method", "finetuning_type", config, problems)
    loader = _select(manager, "loader", "model_loader", config, problems)
    quantizer = None
    prequantized = _checkpoint_quantization(config)
    if prequantized is not None:
        quant_method = str(prequantized.get("quant_method", "unknown"))
        if config.quantization_bit is not None:
            problems.append(Problem("quantization_bit", f"{config.model_name_or_path} is already quantized ({quant_method}); remove quantization_bit (and quantization_method) to train on it as it is", config.where("quantization_bit")))
        for entry in manager.entries("quantizer"):
            if entry.spec.recognizes is not None and entry.spec.recognizes(prequantized):
                quantizer = entry
                if entry.status != "active":
                    problems.append(Problem("model_name_or_path", f"the checkpoint is quantized with {quant_method}; quantizer '{entry.name}' is {entry.status}"))
                break
    elif config.quantization_bit is not None:
        quantizer = _select(manager, "quantizer", "quantization_method", config, problems)
        if quantizer and quantizer.spec.bits and config.quantization_bit not in quantizer.spec.bits:
            problems.append(Problem("quantization_bit", f"{quantizer.name} supports {', '.join(map(str, quantizer.spec.bits))} bits, not {config.quantization_bit}", config.where("quantization_bit")))
    template = _select(manager, "template", "template", config, problems) if config.template else None

    def datasets(key: str) -> list[DatasetPlan]:
        names = split_names(config.get(key))
        attrs, data_problems = resolve_datasets(names, config.dataset_dir, key)
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
    plan.prequantized = str(prequantized.get("quant_method", "unknown")) if prequantized is not None else None
    return plan, problems


def _checkpoint_quantization(config: Config) -> dict | None:
    """The quantization_config of a local checkpoint's config.json, read without transformers."""
    import json

    path = config.model_name_or_path
    if not path or not (Path(path) / "config.json").is_file():
        return None
    try:
        data = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    quantization = data.get("quantization_config")
    return quantization if isinstance(quantization, dict) else None


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
