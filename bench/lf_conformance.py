"""LLaMA-Factory conformance scoreboard: does every example config of LLaMA-Factory run here?

    python bench/lf_conformance.py                 # check every config, print the table and totals
    python bench/lf_conformance.py --train         # also a 2-step `tuneforge train` of each that may run
    python bench/lf_conformance.py --train --only extras/galore   # a subset (path prefix)
    python bench/lf_conformance.py --write-docs    # regenerate docs/compatibility.md

Inputs: LLaMA-Factory's examples/ and data/, copied unmodified to ../shared/lf-examples and
../shared/data-anchor (next to the repository). Each config is used as a user would use it, with only
what cannot travel swapped: the hub model for the tiny offline model of the same family,
``dataset_dir`` for the data-anchor copy and ``output_dir`` for a temporary folder. Relative paths in
the configs (``examples/deepspeed/ds_z3_config.json``) resolve because the run's working directory is a
stand-in LLaMA-Factory checkout whose ``examples`` and ``data`` point at those copies.

Every config ends in one outcome, and the scoreboard test (tests/test_lf_conformance.py) keeps them so:

- ``runs``: `tuneforge check` passes and a 2-step `tuneforge train` (``--train``) succeeds;
- ``check ok``: `tuneforge check` passes; training it here is not possible (the line says why) or
  was not asked for;
- ``refused``: `tuneforge check` stops with a reason that names what the config needs (an engine,
  hardware, a package, a dataset that LLaMA-Factory's data/ does not have);
- ``needs template``: only a chat template tuneforge does not ship yet is missing (issue 18);
- ``unknown key`` or ``traceback``: a defect; the test fails on either.

The v1/ folder holds LLaMA-Factory's next config format and accelerate/ holds launcher configs for
``accelerate launch``; both are listed, not run.

Inference and merge configs of a vision-language family also run with ``--train``: `tuneforge chat
--image` asks one question about an mllm_demo picture, `tuneforge export` merges the adapter and
verifies the export on an image prompt; their outcome is "runs" when the command succeeds.

The 2-step train adds these overrides to make a CPU run short (``TRAIN_OVERRIDES``): max_steps=2,
max_samples=16, no gradient accumulation, a single preprocessing worker, no dataloader workers, no
tracker. ``--skip-done`` trains only the configs without a "runs" result in bench/lf_conformance_train.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EXAMPLES = SHARED / "lf-examples"
ANCHOR = SHARED / "data-anchor"
DOC = REPO / "docs" / "compatibility.md"
KEY_LIST = REPO / "bench" / "lf_keys.txt"
#: The last --train results, so docs/compatibility.md can show them without training again.
TRAIN_RESULTS = REPO / "bench" / "lf_conformance_train.json"

TRAIN_OVERRIDES = (
    "max_steps=2", "max_samples=16", "gradient_accumulation_steps=1", "preprocessing_num_workers=1",
    "dataloader_num_workers=0", "report_to=none", "overwrite_output_dir=true", "save_steps=1000", "logging_steps=1",
)

#: Files under lf-examples that are not training configs, with what they are.
NOT_CONFIGS = {
    "extras/multi_tokens/tokens_cfg.yaml": "data for new_special_tokens_config (token: description), not a config",
}

#: Hub checkpoints that are already quantized: the tiny stand-in is not, so a train here would not
#: exercise what the example is about.
PREQUANTIZED = {"-awq": "AWQ", "-gptq": "GPTQ", "-aqlm": "AQLM"}

OUTCOMES = ("runs", "check ok", "refused", "needs template", "listed", "unknown key", "traceback")
BAD = ("unknown key", "traceback")


@dataclass
class Result:
    path: str  # relative to lf-examples
    kind: str  # train | chat | export | v1 | accelerate | other
    family: str = ""
    check: str = ""  # ok | refused | needs template | unknown key | traceback | listed
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    train: str = ""  # runs | refused: ... | traceback: ... | not run: ...

    @property
    def outcome(self) -> str:
        if self.check != "ok":
            return self.check
        return "runs" if self.train == "runs" else "check ok"

    def line(self) -> str:
        if self.check == "ok":
            return self.train or "check passes; no 2-step train recorded (bench/lf_conformance.py --train)"
        return "; ".join(self.reasons)


# ---------------------------------------------------------------------------------------------- inputs


def available() -> str | None:
    """None when the inputs are there, else why the scoreboard cannot run."""
    for folder in (EXAMPLES, ANCHOR):
        if not folder.is_dir():
            return f"{folder} is missing (LLaMA-Factory's examples/ and data/ copied next to the repository)"
    return None


def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.rglob("*.yaml"))


def kind_of(rel: str, data: dict) -> str:
    parts = rel.split("/")
    if parts[0] == "v1":
        return "v1"
    if "accelerate" in parts[:-1]:
        return "accelerate"
    if rel in NOT_CONFIGS or "model_name_or_path" not in data:
        return "other"
    if data.get("export_dir"):
        return "export"
    if any(k in data for k in ("stage", "do_train", "do_predict", "do_eval")):
        return "train"
    return "chat"


#: Multimodal templates -> the tiny vision-language family standing in for their models (a VLM
#: config gets a VLM, so its images really run). Only families the builder has are used.
VISION_STAND_INS = (("qwen3_vl", "qwen3_vl"), ("qwen2_vl", "qwen2_vl"), ("llava_next", "llava_next"),
                    ("llava", "llava"), ("gemma3", "gemma3"), ("intern_vl", "intern_vl"))


def family_of(model: str, template: str = "") -> str:
    """The tiny-model family standing in for a hub model; llama3 for families the builder lacks. A
    multimodal template (``qwen3_vl_nothink``, ``llava``, ``gemma3``...) picks the tiny VLM of its family."""
    from tuneforge.plugins.apps.tiny_model.builder import VISION_FAMILIES

    for prefix, family in VISION_STAND_INS:
        if str(template or "").startswith(prefix) and family in VISION_FAMILIES:
            return family
    name = str(model).lower()
    for family, marks in (
        ("qwen3", ("qwen3",)),
        ("qwen2", ("qwen2", "qwen1.5", "qwen-")),
        ("mistral", ("mistral", "mixtral")),
        ("gemma", ("gemma",)),
    ):
        if any(m in name for m in marks):
            return family
    return "llama3"


def tiny_model(family: str) -> Path:
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    return cached_tiny_model(family, "tiny")


def tiny_adapter(family: str) -> Path:
    """A LoRA adapter of the family's tiny model (built once, cached): what the training config an
    inference or merge config points at would have written."""
    import shutil

    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    folder = Path.home() / ".cache" / "tuneforge" / "tiny-adapters" / f"{family}-lora-v1"
    if (folder / "adapter_config.json").is_file():
        return folder
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from tuneforge.plugins.apps.tiny_model.builder import VISION_FAMILIES

    torch.manual_seed(0)
    if family in VISION_FAMILIES:  # the language model's linear layers, as `lora_target: all` trains them
        base = AutoModelForImageTextToText.from_pretrained(cached_tiny_model(family, "tiny"))
        targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    else:
        base, targets = AutoModelForCausalLM.from_pretrained(cached_tiny_model(family, "tiny")), "all-linear"
    model = get_peft_model(base, LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


@contextlib.contextmanager
def lf_root(data: dict | None = None, family: str = ""):
    """A stand-in LLaMA-Factory checkout (examples/, data/) to run from, as its README does. The
    relative adapter folders a config names (``saves/...``, written by the training run it follows in
    LLaMA-Factory's README) hold a tiny adapter of the same family."""
    import shutil

    with tempfile.TemporaryDirectory(prefix="lf-root-") as tmp:
        root = Path(tmp)
        (root / "examples").symlink_to(EXAMPLES)
        (root / "data").symlink_to(ANCHOR)
        adapters = (data or {}).get("adapter_name_or_path")
        for name in ([] if not adapters else adapters if isinstance(adapters, list) else str(adapters).split(",")):
            target = root / name.strip()
            if name.strip() and not Path(name.strip()).is_absolute() and not target.exists():
                shutil.copytree(tiny_adapter(family or "llama3"), target)
        yield root


def overrides_for(result: Result, out_dir: Path) -> list[str]:
    over = [f"model_name_or_path={tiny_model(result.family)}", f"output_dir={out_dir}"]
    return over + [f"dataset_dir={ANCHOR}"]


# ----------------------------------------------------------------------------------------------- check


def classify(message: str) -> str:
    if "unknown key" in message:
        return "unknown key"
    if "unknown template" in message:
        return "needs template"
    return "refused"


def _portable(text: str) -> str:
    """Paths as a reader of the docs knows them, the same on every machine (the doc test compares)."""
    for path, name in ((EXAMPLES, "examples"), (ANCHOR, "data"), (SHARED, "../shared")):
        text = text.replace(f"{path}/", f"{name}/").replace(str(path), name)
    import re

    return re.sub(r"[^\s'\"(]*/tiny-models/([\w.-]+)", r"tiny-models/\1", text)  # the tiny stand-in, wherever cached


def _short(message: str, limit: int = 400) -> str:
    message = _portable(" ".join(str(message).split()))
    cut = message.find(" available: ")
    if cut > 0:
        message = message[:cut]
    return message if len(message) <= limit else message[: limit - 3] + "..."


def check_one(path: Path, manager=None) -> Result:
    """`tuneforge check` of one example, in this process (cwd: a stand-in LLaMA-Factory root)."""
    import yaml

    from tuneforge.errors import ConfigError, TuneforgeError
    from tuneforge.plan import prepare

    rel = path.relative_to(EXAMPLES).as_posix()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        return Result(rel, "other", check="traceback", reasons=[f"not YAML: {exc}"])
    data = data if isinstance(data, dict) else {}
    result = Result(rel, kind_of(rel, data))
    if result.kind == "v1":
        result.check = "listed"
        result.reasons = ["LLaMA-Factory v1 format, not loaded: it does not map cleanly onto the v0 keys: the stage is "
                          "not a key but follows from the dataset's converter, train_dataset is a YAML of its own "
                          "(path/source/converter/size, not dataset_info.json), there is no template key (the "
                          "tokenizer's own), and dist_config/kernel_config/init_config/sample_backend/cp_mode have no "
                          "v0 counterpart; write the v0 config (model_name_or_path, stage, finetuning_type, dataset, "
                          "template) to run it"]
        return result
    if result.kind == "accelerate":
        result.check = "listed"
        result.reasons = ["`accelerate launch --config_file` launcher config, not a training config"]
        return result
    if result.kind == "other":
        result.check = "listed"
        result.reasons = [NOT_CONFIGS.get(rel, "not a training config (no model_name_or_path)")]
        return result
    result.family = family_of(data.get("model_name_or_path", ""), data.get("template", ""))
    with tempfile.TemporaryDirectory(prefix="lf-out-") as out, lf_root(data, result.family) as root:
        old = Path.cwd()
        os.chdir(root)
        try:
            prepared = prepare(path, overrides_for(result, Path(out)), manager=manager,
                               inference=result.kind == "chat")
            result.check = "ok"
            result.warnings = [_short(w) for w in prepared.warnings]
        except ConfigError as exc:
            kinds = [classify(p.message) for p in exc.problems]
            for status in ("unknown key", "refused", "needs template"):
                if status in kinds:
                    result.check = status
                    break
            order = {"unknown key": 0, "refused": 1, "needs template": 2}
            problems = sorted(exc.problems, key=lambda p: order[classify(p.message)])
            result.reasons = [_short(f"{p.key}: {p.message}" if p.key else p.message) for p in problems]
        except TuneforgeError as exc:
            result.check = "refused"
            result.reasons = [_short(exc)]
        except Exception as exc:  # noqa: BLE001 - a traceback is what the scoreboard reports
            result.check = "traceback"
            result.reasons = [_short(f"{type(exc).__name__}: {exc}")]
        finally:
            os.chdir(old)
    return result


def check_all(only: str | None = None) -> list[Result]:
    from tuneforge.plugin_manager import PluginManager

    manager = PluginManager(autoload=False)
    files = [p for p in example_files() if not only or p.relative_to(EXAMPLES).as_posix().startswith(only)]
    return [check_one(p, manager) for p in files]


# ----------------------------------------------------------------------------------------------- train


#: The picture a multimodal inference config is asked about (LLaMA-Factory's mllm_demo image).
CHAT_IMAGE = ANCHOR / "mllm_demo_data" / "1.jpg"


def runs_as_a_user_would(result: Result) -> bool:
    """Inference and merge configs of a vision-language family run (`tuneforge chat --image`,
    `tuneforge export` with its image-prompt verification); the text ones are checked only."""
    from tuneforge.plugins.apps.tiny_model.builder import VISION_FAMILIES

    return result.kind in ("chat", "export") and result.family in VISION_FAMILIES


def why_not_train(result: Result, data: dict) -> str | None:
    if runs_as_a_user_would(result):
        return None
    if result.kind == "chat":
        return "not run: an inference config (`tuneforge chat`), checked only"
    if result.kind == "export":
        return "not run: an export config (`tuneforge export`), checked only"
    model = str(data.get("model_name_or_path", "")).lower()
    for mark, method in PREQUANTIZED.items():
        if mark in model:
            return (f"not run: trains on a pre-quantized {method} checkpoint, whose kernels need a CUDA GPU; "
                    "the tiny stand-in is not quantized, so a CPU run would not test it")
    return None


def train_one(result: Result, timeout: int = 900) -> str:
    import yaml

    path = EXAMPLES / result.path
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    reason = why_not_train(result, data)
    if reason:
        return reason
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TUNEFORGE_DISABLE_PLUGIN_AUTOLOAD": "1"}
    with tempfile.TemporaryDirectory(prefix="lf-out-") as out, lf_root(data, result.family) as root:
        cmd = [sys.executable, "-m", "tuneforge.cli.main", "train", str(path),
               *overrides_for(result, Path(out) / "run"), *TRAIN_OVERRIDES]
        if result.kind == "chat":  # one question about a picture, as `tuneforge chat --image` asks it
            cmd = [sys.executable, "-m", "tuneforge.cli.main", "chat", str(path), *overrides_for(result, Path(out) / "run"),
                   "max_new_tokens=4", "--query", "Who are they?", "--image", str(CHAT_IMAGE)]
        elif result.kind == "export":  # merge, save, reload and verify (an image prompt for a VLM)
            cmd = [sys.executable, "-m", "tuneforge.cli.main", "export", str(path), *overrides_for(result, Path(out) / "run")]
        try:
            proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"traceback: timed out after {timeout} s"
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    if proc.returncode == 0:
        return "runs"
    if proc.returncode == 2:
        errors = [ln.removeprefix("error: ") for ln in tail if ln.startswith("error:") or ln.strip().startswith("- ")]
        return "refused: " + _short(" ".join(errors) or (tail[-1] if tail else "error"), 400)
    return "traceback: " + _short(tail[-1] if tail else f"exit status {proc.returncode}", 300)


# ------------------------------------------------------------------------------------------------ keys


def lf_keys() -> dict[str, str]:
    """Every LLaMA-Factory key: name -> group (bench/lf_keys.txt, then the examples' own keys)."""
    import yaml

    keys: dict[str, str] = {}
    group = ""
    for line in KEY_LIST.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            group = line.strip("[]")
            continue
        for name in line.split():
            keys.setdefault(name, group)
    if EXAMPLES.is_dir():
        for path in example_files():
            rel = path.relative_to(EXAMPLES).as_posix()
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or kind_of(rel, data) not in ("train", "chat", "export"):
                continue
            for name in data:
                keys.setdefault(str(name), "used by the examples")
    return keys


def key_table(manager=None) -> list[tuple[str, str, str, str]]:
    """(group, key, status, what tuneforge does) for every LLaMA-Factory key.

    status: acts | warns (accepted, has no effect yet) | refused (names what it needs) | unknown.
    """
    from tuneforge.config.hf_training_args import HF_TRAINING_ARGS
    from tuneforge.config.keys import CORE_KEYS
    from tuneforge.config.refusals import REFUSED_KEYS
    from tuneforge.config.validate import declared_keys
    from tuneforge.plugin_manager import PluginManager

    manager = manager or PluginManager(autoload=False)
    declared = declared_keys(manager)
    owners = manager.owned_keys()
    rows = []
    for name, group in lf_keys().items():
        if name in REFUSED_KEYS:
            rows.append((group, name, "refused", REFUSED_KEYS[name].reason))
            continue
        key = declared.get(name)
        if key is None:
            rows.append((group, name, "unknown", "`tuneforge check` stops: unknown key"))
            continue
        if name in CORE_KEYS:
            owner = "core"
        elif name in owners:
            owner = ", ".join(f"{e.kind} {e.name}" for e in owners[name])
        elif name in HF_TRAINING_ARGS:
            owner = "TrainingArguments"
        else:
            owner = "?"
        effective = key.effective
        if name in owners and name not in CORE_KEYS:
            effective = all(next(k for k in e.spec.keys if k.name == name).effective for e in owners[name])
        doc = " ".join(str(key.doc or "").split()).replace("|", "\\|")
        if effective:
            rows.append((group, name, "acts", f"{doc} ({owner})" if doc else f"passed to the trainer ({owner})"))
        else:
            rows.append((group, name, "warns", f"accepted, has no effect yet: `tuneforge check` warns. {doc} ({owner})"))
    return rows


# ----------------------------------------------------------------------------------------------- report


def load_train_results() -> dict[str, str]:
    if TRAIN_RESULTS.is_file():
        return json.loads(TRAIN_RESULTS.read_text(encoding="utf-8"))
    return {}


def merge_train(results: list[Result], trained: dict[str, str]) -> None:
    for r in results:
        if r.check == "ok" and not r.train and r.path in trained:
            r.train = trained[r.path]


def totals(results: list[Result]) -> dict[str, int]:
    counts = {o: 0 for o in OUTCOMES}
    for r in results:
        counts[r.outcome] += 1
    counts["configs"] = sum(1 for r in results if r.check != "listed")
    counts["check passes"] = sum(1 for r in results if r.check == "ok")
    return counts


def key_totals(rows) -> dict[str, int]:
    counts = {"keys": len(rows), "acts": 0, "warns": 0, "refused": 0, "unknown": 0}
    for row in rows:
        counts[row[2]] += 1
    return counts


def print_table(results: list[Result], rows) -> None:
    width = max(len(r.path) for r in results)
    for r in results:
        print(f"{r.path.ljust(width)}  {r.outcome:<15} {r.line()}")
    t = totals(results)
    print()
    print(f"{t['configs']} configs (v1/accelerate/data files listed apart): check passes {t['check passes']}, "
          + ", ".join(f"{o} {t[o]}" for o in OUTCOMES if o != "listed"))
    k = key_totals(rows)
    print(f"{k['keys']} LLaMA-Factory keys: acts {k['acts']}, warns {k['warns']}, refused {k['refused']}, "
          f"unknown {k['unknown']}")


def readme_line(results: list[Result]) -> str:
    """The README's figure (tests/test_lf_conformance.py checks that the README says it)."""
    t = totals(results)
    return (f"`tuneforge check` passes {t['check passes']} of {t['configs']} (a 2-step `tuneforge train` runs "
            f"{t['runs']} of them); {t['refused']} are refused with what they need and {t['needs template']} need a "
            f"chat template not shipped yet; none ends in an unknown key or a traceback")


def render_doc(results: list[Result], rows) -> str:
    t = totals(results)
    k = key_totals(rows)
    out = [
        "# LLaMA-Factory compatibility",
        "",
        "<!-- Generated by `python bench/lf_conformance.py --write-docs`; tests/test_lf_conformance.py checks it"
        " is current. Do not edit by hand. -->",
        "",
        "tuneforge reads LLaMA-Factory's config keys. This page says, for every example config in"
        " LLaMA-Factory's `examples/` and every key LLaMA-Factory documents, what tuneforge does with it."
        " The configs were run as a user would, with only the hub model swapped for a tiny local model of"
        " the same family (and `dataset_dir`/`output_dir` pointed at local folders): see"
        " `bench/lf_conformance.py`.",
        "",
        f"**Configs**: {t['configs']} training, inference and export configs; `tuneforge check` passes"
        f" {t['check passes']}; a 2-step `tuneforge train` runs {t['runs']}; refused with a reason"
        f" {t['refused']}; needing a chat template not shipped yet {t['needs template']}; unknown key"
        f" {t['unknown key']}; traceback {t['traceback']}.",
        "",
        f"**Keys**: {k['keys']} LLaMA-Factory keys: {k['acts']} act, {k['warns']} are accepted with a"
        f" \"has no effect\" warning, {k['refused']} are refused with what they need, {k['unknown']} are"
        " unknown (a config that sets one fails `tuneforge check`). Keys of Hugging Face's"
        " `TrainingArguments` all pass to the trainer and are not listed unless the examples use them.",
        "",
        "## Example configs",
        "",
        "| config | outcome | detail |",
        "|---|---|---|",
    ]
    for r in results:
        detail = r.line().replace("|", "\\|")
        if r.check == "ok" and r.warnings:
            detail += " (warnings: " + "; ".join(w.replace("|", "\\|") for w in r.warnings) + ")"
        out.append(f"| `{r.path}` | {r.outcome} | {detail} |")
    out += [
        "",
        "Outcomes: **runs**: check and a 2-step train pass; **check ok**: check passes, the detail says why"
        " it was not trained here; **refused**: check stops with what the config needs; **needs template**:"
        " only a chat template is missing (issue 18); **listed**: not a v0 training config.",
        "",
        "## Keys",
        "",
        "| group | key | status | what tuneforge does |",
        "|---|---|---|---|",
    ]
    for group, name, status, what in rows:
        out.append(f"| {group} | `{name}` | {status} | {what} |")
    out.append("")
    return "\n".join(out)


def scoreboard(only: str | None = None, train: bool = False, skip_done: bool = False):
    results = check_all(only)
    if train:
        trained = load_train_results()
        for r in results:
            if r.check != "ok":
                continue
            if skip_done and trained.get(r.path) == "runs":
                r.train = "runs"
                continue
            start = time.time()
            r.train = train_one(r)
            trained[r.path] = r.train
            print(f"  trained {r.path}: {r.train} ({time.time() - start:.0f} s)", file=sys.stderr)
            TRAIN_RESULTS.write_text(json.dumps(dict(sorted(trained.items())), indent=1) + "\n", encoding="utf-8")
    else:
        merge_train(results, load_train_results())
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", action="store_true", help="also a 2-step tuneforge train of each that may run")
    parser.add_argument("--only", help="only configs whose path under lf-examples starts with this")
    parser.add_argument("--skip-done", action="store_true", help="with --train: keep earlier 'runs' results")
    parser.add_argument("--write-docs", action="store_true", help="write docs/compatibility.md")
    parser.add_argument("--json", help="write the results as JSON here")
    args = parser.parse_args(argv)
    for name, value in (("OMP_NUM_THREADS", "1"), ("TOKENIZERS_PARALLELISM", "false"), ("HF_HUB_OFFLINE", "1"),
                        ("TUNEFORGE_DISABLE_PLUGIN_AUTOLOAD", "1")):
        os.environ.setdefault(name, value)
    missing = available()
    if missing:
        print(f"skipped: {missing}")
        return 0
    results = scoreboard(args.only, args.train, args.skip_done)
    rows = key_table()
    print_table(results, rows)
    if args.write_docs:
        if args.only:
            parser.error("--write-docs needs every config (drop --only)")
        DOC.write_text(render_doc(results, rows), encoding="utf-8")
        print(f"wrote {DOC}")
        print(f"README line: {readme_line(results)}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) | {"outcome": r.outcome} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
