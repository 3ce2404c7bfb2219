"""Shared pieces of the multimodal tests: a dataset folder of media rows, a row, the features a
featurizer gives, and a short LoRA sft run through `tuneforge train`."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import ANCHOR, run_cli

SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}


def media_dataset(tmp_path: Path, name: str, column: str, folder: str, rows: list[dict]) -> Path:
    """``tmp_path`` as a dataset_dir: ``folder/`` for the media and dataset ``name`` of sharegpt ``rows``
    whose media are in ``column`` (images, videos or audios)."""
    (tmp_path / folder).mkdir(exist_ok=True)
    (tmp_path / f"{name}.json").write_text(json.dumps(rows))
    entry = {"file_name": f"{name}.json", "formatting": "sharegpt", "columns": {"messages": "messages", column: column},
             "tags": SHAREGPT_TAGS}
    (tmp_path / "dataset_info.json").write_text(json.dumps({name: entry}))
    return tmp_path


def media_row(question: str, answer: str, column: str, files) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            column: list(files)}


def features_of(ctx):
    """(the loaded dataset, its supervised features) for the run context's one dataset."""
    from tuneforge.data.dataset import featurizer
    from tuneforge.data.loading import load_examples
    from tuneforge.data.tokenize import Settings

    [result] = load_examples(ctx, ctx.plan.datasets)
    features = featurizer(ctx, "supervised", Settings.from_config(ctx.config, "supervised"))(
        {"_example": [json.dumps(e) for e in result.examples]})
    return result, features


def train_lora_sft(model, template: str, dataset: str, tmp_path: Path, *, batch_size: int = 3, steps: int = 12,
                   extra: str = "") -> tuple[Path, list[float], list[str]]:
    """`tuneforge train` of a LoRA sft run on LLaMA-Factory's ``dataset`` (its data folder): the output
    folder, the logged losses and the adapter's weight names."""
    from safetensors import safe_open

    config, out = tmp_path / "sft.yaml", tmp_path / "out"
    config.write_text(f"""model_name_or_path: {model}
stage: sft
do_train: true
finetuning_type: lora
lora_target: all
dataset: {dataset}
dataset_dir: {ANCHOR}
template: {template}
cutoff_len: 1024
output_dir: {out}
per_device_train_batch_size: {batch_size}
learning_rate: 1.0e-2
max_steps: {steps}
logging_steps: 3
save_strategy: "no"
report_to: none
{extra}""")
    result = run_cli("train", str(config), env={"TUNEFORGE_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    logged = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    return out, [entry["loss"] for entry in logged if "loss" in entry], keys
