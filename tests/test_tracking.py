"""Experiment tracking offline: each tracker gets the loss curve and, from tuneforge, the resolved
config and the run manifest (core/train/tracking.py)."""

from __future__ import annotations


import pytest
import yaml

from .test_training_features import data_dir, train  # noqa: F401  (fixture and helper shared)


def test_tensorboard_records_losses_config_and_manifest(tiny_model, data_dir, tmp_path):  # noqa: F811
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_model, data_dir, tmp_path, report_to="tensorboard", max_steps=3)
    (events,) = {p.parent for p in (tmp_path / "runs").rglob("events.out.tfevents.*")}
    accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0, "scalars": 0})
    accumulator.Reload()
    assert len(accumulator.Scalars("train/loss")) == 3
    texts = {tag: accumulator.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in accumulator.Tags()["tensors"]
             if tag.startswith("tuneforge/")}
    assert set(texts) == {"tuneforge/training_args.yaml/text_summary", "tuneforge/run_manifest.json/text_summary"}
    assert "finetuning_type: lora" in texts["tuneforge/training_args.yaml/text_summary"]
    assert '"trainable_parameters"' in texts["tuneforge/run_manifest.json/text_summary"]


def test_mlflow_local_file_store_records_metrics_and_run_files(tiny_model, data_dir, tmp_path, monkeypatch):  # noqa: F811
    pytest.importorskip("mlflow")
    import mlflow

    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tuneforge-test")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3.17 keeps the file store behind this switch
    train(tiny_model, data_dir, tmp_path / "out", report_to="mlflow", max_steps=3)
    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "tuneforge-test"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 3
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "tuneforge")}
    assert artifacts == {"tuneforge/training_args.yaml", "tuneforge/run_manifest.json"}
    local = client.download_artifacts(run.info.run_id, "tuneforge/training_args.yaml", str(tmp_path))
    assert yaml.safe_load(open(local))["finetuning_type"] == "lora"


def test_wandb_offline_run_holds_the_config_and_run_files(tiny_model, data_dir, tmp_path, monkeypatch):  # noqa: F811
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(tiny_model, data_dir, tmp_path / "out", report_to="wandb", max_steps=2)
    (run,) = list((tmp_path / "wandb").glob("offline-run-*"))
    saved = {p.name for p in (run / "files").iterdir()}
    assert {"training_args.yaml", "run_manifest.json"} <= saved
    import wandb

    try:
        assert wandb.run.config["tuneforge"]["finetuning_type"] == "lora"  # the run stays open in this process
    finally:
        wandb.finish()


def test_use_swanlab_logs_locally(tiny_model, data_dir, tmp_path, monkeypatch):  # noqa: F811
    pytest.importorskip("swanlab", reason="swanlab is not installed (pip install swanlab)")
    train(tiny_model, data_dir, tmp_path / "out", use_swanlab=True, swanlab_mode="local",
          swanlab_logdir=str(tmp_path / "swanlog"), max_steps=2)
    assert any((tmp_path / "swanlog").rglob("*"))


def test_use_swanlab_adds_the_tracker_and_exports_its_settings(tiny_model, monkeypatch):
    from tuneforge.plan import prepare
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.train.context import RunContext
    from tuneforge.train.tracking import report_to

    for variable in ("SWANLAB_PROJECT", "SWANLAB_MODE", "SWANLAB_WORKSPACE"):
        monkeypatch.delenv(variable, raising=False)
    prepared = prepare(None, [f"model_name_or_path={tiny_model}", "dataset=identity", "dataset_dir=data", "use_swanlab=true",
                              "swanlab_project=demo", "swanlab_mode=local"], manager=PluginManager(autoload=False))
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager)
    assert report_to(ctx, "none") == ["swanlab"]
    assert report_to(ctx, ["tensorboard"]) == ["tensorboard", "swanlab"]
    import os

    assert os.environ["SWANLAB_PROJECT"] == "demo" and os.environ["SWANLAB_MODE"] == "local"
