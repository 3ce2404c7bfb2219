"""What the page's widgets mean as a config: the YAML that Start, Predict, Chat and Export run with.

Everything here works on a plain ``{element id: widget value}`` mapping and imports no gradio, so
the command preview, the saved arguments and the launched run are built by the same functions and
tested without a browser. Widget values are converted with the config checker's own coercion
(:mod:`tuneforge.plugins.apps.webui.fields`), and plugin keys come from the plugins' specs:

- the top bar and the tabs' fixed fields map onto core and TrainingArguments keys;
- each selected plugin (method, stage, quantizer, inference engine) adds the keys of its own
  accordion whose value differs from the key's default;
- the "extra arguments" box (YAML) is merged last, so any key the page has no widget for can be set.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuneforge.config.validate import declared_keys
from tuneforge.errors import TuneforgeError
from tuneforge.plugin_manager import PluginManager, split_names
from tuneforge.specs import ConfigKey
from . import registry
from .fields import NONE_CHOICE, WidgetValueError, from_widget, is_default, to_widget

Values = dict[str, Any]

#: The plugin kinds whose keys get generated accordions, and the element holding the selection.
PLUGIN_SELECTORS: dict[str, str] = {
    "method": "top.finetuning_type",
    "quantizer": "top.quantization_method",
    "stage": "train.stage",
    "engine": "chat.infer_backend",
}

#: The template choice that leaves ``template`` unset: detected from the tokenizer at run time.
AUTO = "auto"
#: Booster choice -> the config keys it sets (LLaMA-Factory's booster names).
BOOSTERS: dict[str, dict[str, Any]] = {
    "auto": {},
    "flashattn2": {"flash_attn": "fa2"},
    "unsloth": {"use_unsloth": True},
    "liger_kernel": {"enable_liger_kernel": True},
}
#: Compute type -> the config keys it sets.
COMPUTE_TYPES: dict[str, dict[str, Any]] = {
    "bf16": {"bf16": True},
    "fp16": {"fp16": True},
    "fp32": {},
    "pure_bf16": {"pure_bf16": True},
}
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "cosine_with_min_lr", "warmup_stable_decay")
#: report_to choices; swanlab is our use_swanlab flag, the rest are TrainingArguments integrations.
REPORTERS = ("none", "tensorboard", "wandb", "mlflow", "swanlab")

#: Fixed fields whose value is a config key's value as it is: element id -> key.
TRAIN_FIELDS: dict[str, str] = {
    "train.dataset_dir": "dataset_dir",
    "train.learning_rate": "learning_rate",
    "train.num_train_epochs": "num_train_epochs",
    "train.max_grad_norm": "max_grad_norm",
    "train.max_samples": "max_samples",
    "train.cutoff_len": "cutoff_len",
    "train.batch_size": "per_device_train_batch_size",
    "train.gradient_accumulation_steps": "gradient_accumulation_steps",
    "train.lr_scheduler_type": "lr_scheduler_type",
    "train.logging_steps": "logging_steps",
    "train.save_steps": "save_steps",
    "train.warmup_steps": "warmup_steps",
    "train.packing": "packing",
    "train.neat_packing": "neat_packing",
    "train.train_on_prompt": "train_on_prompt",
    "train.mask_history": "mask_history",
    "train.replace_placeholders": "replace_placeholders",
}
EVAL_FIELDS: dict[str, str] = {
    "eval.dataset_dir": "dataset_dir",
    "eval.cutoff_len": "cutoff_len",
    "eval.max_samples": "max_samples",
    "eval.batch_size": "per_device_eval_batch_size",
    "eval.max_new_tokens": "max_new_tokens",
    "eval.top_p": "top_p",
    "eval.temperature": "temperature",
}
BENCH_FIELDS: dict[str, str] = {
    "bench.task_dir": "task_dir",
    "bench.task": "task",
    "bench.n_shot": "n_shot",
    "bench.lang": "lang",
    "bench.batch_size": "batch_size",
}
EXPORT_FIELDS: dict[str, str] = {
    "export.export_size": "export_size",
    "export.export_quantization_bit": "export_quantization_bit",
    "export.export_quantization_dataset": "export_quantization_dataset",
    "export.export_device": "export_device",
    "export.export_legacy_format": "export_legacy_format",
    "export.export_dir": "export_dir",
    "export.export_hub_model_id": "export_hub_model_id",
}
CHAT_FIELDS: dict[str, str] = {
    "chat.infer_dtype": "infer_dtype",
}


class ArgumentError(TuneforgeError):
    """A widget value that cannot become a config value; the message names the field."""


def plugin_element(kind: str, name: str, key: str) -> str:
    """The element id of one generated plugin-key widget."""
    return f"plugin.{kind}.{name}.{key}"


def plugin_accordion(kind: str, name: str) -> str:
    return f"plugin.{kind}.{name}"


def timestamp() -> str:
    return time.strftime("%Y-%m-%d-%H-%M-%S")


@dataclass
class Context:
    """What turns widget values into a config besides the values: the plugins and the save root."""

    manager: PluginManager
    save_root: Path

    def __post_init__(self):
        self.save_root = Path(self.save_root)
        self.keys: dict[str, ConfigKey] = declared_keys(self.manager)

    # --- the save folder layout: <save_root>/<model>/<method>/<run> --------------------------------

    def method_root(self, values: Values) -> Path:
        model = registry.model_key(values.get("top.model_name"), values.get("top.model_path"))
        from tuneforge.plugins import DEFAULT_SELECTIONS

        return self.save_root / model / str(values.get("top.finetuning_type") or DEFAULT_SELECTIONS["finetuning_type"])

    def run_dir(self, values: Values, name: str | None) -> Path:
        """A run's folder: a bare name lives under the method root, a path is taken as it is."""
        text = (name or "").strip()
        if not text:
            raise ArgumentError("output_dir: empty; give the run a name")
        path = Path(text)
        if path.is_absolute() or len(path.parts) > 1:
            return path
        return self.method_root(values) / text

    def checkpoint_paths(self, values: Values) -> list[Path]:
        """The selected checkpoints: names listed under the method root, or folders typed in by hand."""
        out = []
        for name in split_names(values.get("top.checkpoint_path")):
            listed = self.method_root(values) / name
            out.append(listed if listed.is_dir() else Path(name))
        return out

    # --- conversions ----------------------------------------------------------------------------------

    def convert(self, element: str, key: str, value: Any) -> Any:
        try:
            return from_widget(self.keys[key], value)
        except WidgetValueError as exc:
            raise ArgumentError(f"{element} ({exc})") from None

    def fields(self, values: Values, table: dict[str, str]) -> dict[str, Any]:
        """The fixed fields' keys; an unticked checkbox stays out (``packing`` unset is not ``false``:
        pt packs unless told not to)."""
        out = {}
        for element, key in table.items():
            value = self.convert(element, key, values.get(element))
            if value is None or (value is False and not self.keys[key].default):
                continue
            out[key] = value
        return out

    def plugin_keys(self, values: Values, kind: str, name: str | None) -> dict[str, Any]:
        """The selected plugin's keys whose widgets differ from the key's default."""
        if not name or name == NONE_CHOICE:
            return {}
        try:
            entry = self.manager.entry(kind, name)
        except TuneforgeError:
            return {}
        out = {}
        for key in visible_keys(entry.spec):
            element = plugin_element(kind, name, key.name)
            if element not in values:
                continue
            try:
                value = from_widget(key, values[element])
            except WidgetValueError as exc:
                raise ArgumentError(f"{kind} {name}: {exc}") from None
            if not is_default(key, value):
                out[key.name] = value
        return out

    # --- the configs ----------------------------------------------------------------------------------

    def model_config(self, values: Values, *, for_training: bool) -> dict[str, Any]:
        """Model, checkpoint, method, template, quantization, RoPE scaling and booster (the top bar)."""
        model_path = str(values.get("top.model_path") or "").strip()
        if not model_path:
            raise ArgumentError("model path: empty; choose a model name or type a local folder / hub id")
        config: dict[str, Any] = {"model_name_or_path": model_path}
        adapters = []
        for path in self.checkpoint_paths(values):
            if is_adapter(path):
                adapters.append(str(path))
            else:  # a full-model checkpoint (full/freeze/...): it replaces the base model
                config["model_name_or_path"] = str(path)
        if adapters:
            config["adapter_name_or_path"] = ",".join(adapters)
        method = values.get("top.finetuning_type")
        if method and (for_training or adapters):
            config["finetuning_type"] = method
        template = values.get("top.template")
        if template and template != AUTO:
            config["template"] = template
        bits = values.get("top.quantization_bit")
        if bits not in (None, "", NONE_CHOICE):
            config["quantization_bit"] = int(bits)
            config["quantization_method"] = values.get("top.quantization_method")
            config.update(self.plugin_keys(values, "quantizer", values.get("top.quantization_method")))
        rope = values.get("top.rope_scaling")
        if rope not in (None, "", NONE_CHOICE):
            config["rope_scaling"] = rope
        config.update(BOOSTERS.get(values.get("top.booster") or "auto", {}))
        return config

    def train_config(self, values: Values) -> dict[str, Any]:
        """The `tuneforge train` config of the Train tab."""
        from tuneforge.plugins import DEFAULT_SELECTIONS

        stage = values.get("train.stage") or DEFAULT_SELECTIONS["stage"]
        config: dict[str, Any] = {"stage": stage, "do_train": True}
        config.update(self.model_config(values, for_training=True))
        config.update(self.plugin_keys(values, "method", values.get("top.finetuning_type")))
        datasets = _names(values.get("train.dataset"))
        if datasets:
            config["dataset"] = ",".join(datasets)
        fields = self.fields(values, TRAIN_FIELDS)
        config["dataset_dir"] = fields.pop("dataset_dir", "data")
        config.update(fields)
        config.update(COMPUTE_TYPES.get(values.get("train.compute_type") or "fp32", {}))
        alpha = self.convert("train.neftune_alpha", "neftune_noise_alpha", values.get("train.neftune_alpha"))
        if alpha:
            config["neftune_noise_alpha"] = alpha
        reporters = _names(values.get("train.report_to")) or ["none"]
        if "swanlab" in reporters:
            config["use_swanlab"] = True
            reporters = [r for r in reporters if r != "swanlab"] or ["none"]
        if len(reporters) > 1 and "none" in reporters:
            reporters.remove("none")
        config["report_to"] = reporters[0] if len(reporters) == 1 else reporters
        val_size = self.convert("train.val_size", "val_size", values.get("train.val_size"))
        if val_size:
            config["val_size"] = val_size
            config["eval_strategy"] = "steps"
            config["eval_steps"] = config.get("save_steps", 100)
            config["per_device_eval_batch_size"] = config.get("per_device_train_batch_size", 1)
        config.update(self.plugin_keys(values, "stage", stage))
        config["output_dir"] = str(self.run_dir(values, values.get("train.output_dir")))
        config["plot_loss"] = True
        config["disable_tqdm"] = True  # the page shows its own progress bar; tqdm's \r lines clutter the log
        config.update(parse_extra(values.get("train.extra_args")))
        return config

    def predict_config(self, values: Values) -> dict[str, Any]:
        """`tuneforge train` with do_predict + predict_with_generate: BLEU/ROUGE on an eval dataset."""
        config: dict[str, Any] = {"stage": "sft", "do_train": False, "do_predict": True, "predict_with_generate": True}
        config.update(self.model_config(values, for_training=True))
        datasets = _names(values.get("eval.dataset"))
        if datasets:
            config["eval_dataset"] = ",".join(datasets)
            # `tuneforge train` builds a training set even when do_train is false: name the same data
            # (it is read, not trained on) so a predict-only run needs nothing else
            config["dataset"] = config["eval_dataset"]
        fields = self.fields(values, EVAL_FIELDS)
        config["dataset_dir"] = fields.pop("dataset_dir", "data")
        config.update(fields)
        # the Train tab's placeholders hold for the data wherever it is read (identity's {{name}})
        placeholders = self.convert("train.replace_placeholders", "replace_placeholders", values.get("train.replace_placeholders"))
        if placeholders:
            config["replace_placeholders"] = placeholders
        config["output_dir"] = str(self.run_dir(values, values.get("eval.output_dir")))
        config["report_to"] = "none"
        config["disable_tqdm"] = True
        return config

    def benchmark_config(self, values: Values) -> dict[str, Any]:
        """`tuneforge eval`: a multiple-choice benchmark from task_dir."""
        config = self.model_config(values, for_training=False)
        config.update(self.fields(values, BENCH_FIELDS))
        config["save_dir"] = str(self.run_dir(values, values.get("bench.save_dir")))
        return config

    def chat_config(self, values: Values) -> dict[str, Any]:
        """The model the Chat tab loads, with the selected inference engine and its keys."""
        config = self.model_config(values, for_training=False)
        engine = values.get("chat.infer_backend")
        if engine:
            config["infer_backend"] = engine
            config.update(self.plugin_keys(values, "engine", engine))
        config.update(self.fields(values, CHAT_FIELDS))
        return config

    def export_config(self, values: Values) -> dict[str, Any]:
        """`tuneforge export`: merge the selected adapter into the base model and verify it."""
        config = self.model_config(values, for_training=False)
        config.update(self.fields(values, EXPORT_FIELDS))
        if config.get("export_quantization_bit") is not None and values.get("top.quantization_method") not in (None, "", NONE_CHOICE):
            config.setdefault("quantization_method", values.get("top.quantization_method"))
        return config

    # --- loading saved arguments back into the widgets -------------------------------------------------

    def train_values(self, config: dict[str, Any], values: Values) -> tuple[Values, dict[str, Any]]:
        """Widget values for a saved `tuneforge train` config, and the keys no widget shows.

        The keys without a widget go to the extra-arguments box, so loading and saving again keeps
        every key of the file.
        """
        config = dict(config)
        out: Values = {}
        left: dict[str, Any] = {}
        for key in ("do_train", "plot_loss", "disable_tqdm"):
            config.pop(key, None)
        if "stage" in config:
            out["train.stage"] = config.pop("stage")
        if "finetuning_type" in config:
            out["top.finetuning_type"] = config.pop("finetuning_type")
        if "model_name_or_path" in config:
            out["top.model_path"] = str(config.pop("model_name_or_path"))
            out["top.model_name"] = registry.CUSTOM
        adapters = split_names(config.pop("adapter_name_or_path", None))
        out["top.checkpoint_path"] = ",".join(adapters)
        if "template" in config:
            out["top.template"] = config.pop("template") or AUTO
        if config.get("quantization_bit") is not None:
            out["top.quantization_bit"] = str(config.pop("quantization_bit"))
            if "quantization_method" in config:
                out["top.quantization_method"] = config.pop("quantization_method")
        if "rope_scaling" in config:
            out["top.rope_scaling"] = config.pop("rope_scaling") or NONE_CHOICE
        for booster, keys in BOOSTERS.items():
            if keys and all(config.get(k) == v for k, v in keys.items()):
                out["top.booster"] = booster
                for k in keys:
                    config.pop(k)
        if "dataset" in config:
            out["train.dataset"] = split_names(config.pop("dataset"))
        compute = "fp32"
        for name, keys in COMPUTE_TYPES.items():
            if keys and all(config.get(k) == v for k, v in keys.items()):
                compute = name
        for k in ("bf16", "fp16", "pure_bf16"):
            config.pop(k, None)
        out["train.compute_type"] = compute
        if "neftune_noise_alpha" in config:
            out["train.neftune_alpha"] = config.pop("neftune_noise_alpha")
        reporters = config.pop("report_to", "none")
        reporters = split_names(reporters) if not isinstance(reporters, list) else reporters
        if config.pop("use_swanlab", False):
            reporters = [r for r in reporters if r != "none"] + ["swanlab"]
        out["train.report_to"] = reporters or ["none"]
        if config.get("val_size"):
            out["train.val_size"] = config.pop("val_size")
            for k in ("eval_strategy", "eval_steps", "per_device_eval_batch_size"):
                config.pop(k, None)
        if "output_dir" in config:
            out["train.output_dir"] = str(config.pop("output_dir"))
        for element, key in TRAIN_FIELDS.items():
            if key in config:
                out[element] = to_widget(self.keys[key], config.pop(key))
            elif self.keys[key].type is bool:  # an unticked box is written as no key at all
                out[element] = False
        # plugin keys: every generated widget of that key name, whichever plugin's accordion it is in
        owned = self.manager.owned_keys()
        for key_name in list(config):
            targets = [(plugin_element(e.kind, e.name, key_name), e) for e in owned.get(key_name, ())
                       if e.kind in PLUGIN_SELECTORS and plugin_element(e.kind, e.name, key_name) in values]
            if not targets:
                continue
            value = config.pop(key_name)
            for element, entry in targets:
                out[element] = to_widget(next(k for k in entry.spec.keys if k.name == key_name), value)
        left.update(config)
        out["train.extra_args"] = yaml.safe_dump(left, sort_keys=False, allow_unicode=True) if left else ""
        return out, left


def visible_keys(spec) -> list[ConfigKey]:
    """The keys a plugin's accordion shows: all but the flag that selects the plugin itself
    (``use_galore`` is what choosing galore in the method dropdown means)."""
    flag = getattr(spec, "flag", None)
    return [k for k in spec.keys if k.name != flag]


def is_adapter(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def has_weights(path: Path) -> bool:
    path = Path(path)
    if is_adapter(path):
        return True
    return (path / "config.json").is_file() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin")))


def list_checkpoints(method_root: Path) -> list[str]:
    """Runs and their checkpoint-N folders under ``<save root>/<model>/<method>`` that hold weights,
    newest run first, as names relative to that folder."""
    method_root = Path(method_root)
    if not method_root.is_dir():
        return []
    runs = sorted((p for p in method_root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    out = []
    for run in runs:
        if has_weights(run):
            out.append(run.name)
        steps = [p for p in run.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit() and has_weights(p)]
        out += [f"{run.name}/{p.name}" for p in sorted(steps, key=lambda p: int(p.name.split("-")[-1]))]
    return out


def _names(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v).strip()]
    return split_names(value)


def parse_extra(text: Any) -> dict[str, Any]:
    """The extra-arguments box: a YAML mapping of any config keys."""
    if not text or not str(text).strip():
        return {}
    try:
        data = yaml.safe_load(str(text))
    except yaml.YAMLError as exc:
        raise ArgumentError(f"extra arguments: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ArgumentError("extra arguments: write a YAML mapping, e.g. `weight_decay: 0.01`")
    return {str(k): v for k, v in data.items()}


def to_yaml(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def command_line(verb: str, config_path: str | Path, device_count: int = 1) -> str:
    """The shell command the page runs, as a user would type it."""
    env = f"FORCE_TORCHRUN=1 NPROC_PER_NODE={device_count} " if device_count and device_count > 1 else ""
    return f"{env}tuneforge {verb} {shlex.quote(str(config_path))}"
