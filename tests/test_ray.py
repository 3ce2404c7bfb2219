"""USE_RAY=1 and LLaMA-Factory's ray_* keys, checked before anything starts (no Ray cluster here: the real
2-worker Ray Train run is in tests/test_distributed.py, beside the torchrun run it is compared with)."""

from __future__ import annotations

import json
import sys

import pytest

from tuneforge.errors import ConfigError
from tuneforge.plan import prepare


@pytest.fixture
def cfg(tmp_path, tiny_model):
    (tmp_path / "rows.json").write_text(json.dumps([{"instruction": "hi", "output": "hello"}] * 4))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"rows": {"file_name": "rows.json"}}))
    path = tmp_path / "ray.yaml"
    path.write_text(f"model_name_or_path: {tiny_model}\nstage: sft\ndataset: rows\ndataset_dir: {tmp_path}\n"
                    f"template: llama3\noutput_dir: {tmp_path}/out\nray_num_workers: 2\n")
    return path


def problems_of(path, *overrides) -> str:
    with pytest.raises(ConfigError) as error:
        prepare(path, list(overrides))
    return str(error.value)


@pytest.fixture
def use_ray(monkeypatch):
    for name in ("FORCE_TORCHRUN", "NPROC_PER_NODE", "NNODES", "NODE_RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("USE_RAY", "1")


def test_without_ray_installed_use_ray_is_an_error_naming_the_pip_command(cfg, use_ray, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what Python does for a module that cannot be imported
    message = problems_of(cfg)
    assert "USE_RAY=1 (environment): needs Ray Train, which is not installed: pip install 'tuneforge[ray]'" in message
    assert "ray[train]==2.60.*" in message


def test_ray_keys_are_checked_with_where_they_are(cfg, use_ray):
    pytest.importorskip("ray")
    cfg.write_text(cfg.read_text() + "resources_per_worker: '{\"GPU\": 1'\nplacement_strategy: TIGHT\n"
                   "ray_storage_filesystem: ftp\nray_init_kwargs: [1, 2]\n")
    message = problems_of(cfg, "ray_num_workers=0")
    assert f"{cfg}:8: resources_per_worker: is not valid JSON" in message
    assert f"{cfg}:9: placement_strategy:" in message and "STRICT_PACK" in message
    assert f"{cfg}:10: ray_storage_filesystem:" in message and "gcs" in message
    assert "ray_num_workers:" in message and ">= 1" in message
    assert "ray_init_kwargs" in message


def test_resource_amounts_must_be_numbers(cfg, use_ray):
    pytest.importorskip("ray")
    message = problems_of(cfg, 'resources_per_worker={"CPU": "two"}')
    assert "resources_per_worker: amounts must be numbers >= 0, got {'CPU': 'two'}" in message


def test_llamafactory_json_strings_and_yaml_mappings_are_both_accepted(cfg, use_ray):
    pytest.importorskip("ray")
    from tuneforge.train.ray_launcher import resources, storage_path

    prepared = prepare(cfg, ['resources_per_worker={"CPU": 2, "memory": 1000}', "ray_storage_path=saves"])
    assert resources(prepared.config) == {"CPU": 2, "memory": 1000}
    assert storage_path(prepared.config) == str((__import__("pathlib").Path.cwd() / "saves"))
    cfg.write_text(cfg.read_text() + "resources_per_worker:\n  GPU: 1\nray_init_kwargs:\n  runtime_env:\n"
                   "    env_vars: {A: b}\n")
    prepared = prepare(cfg)
    assert resources(prepared.config) == {"GPU": 1}
    assert prepared.config.get("ray_init_kwargs") == {"runtime_env": {"env_vars": {"A": "b"}}}


def test_torchrun_variables_with_use_ray_are_refused_not_ignored(cfg, use_ray, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("FORCE_TORCHRUN", "1")
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    message = problems_of(cfg)
    assert ("USE_RAY=1 (environment): FORCE_TORCHRUN, NPROC_PER_NODE are torchrun's: Ray starts ray_num_workers "
            "workers itself") in message


def test_ray_keys_without_use_ray_say_the_run_trains_without_ray(cfg, monkeypatch):
    monkeypatch.delenv("USE_RAY", raising=False)
    warnings = prepare(cfg).warnings
    assert any(w.startswith(f"ray_num_workers ({cfg}:7) act only with USE_RAY=1 set") for w in warnings), warnings
    cfg.write_text(cfg.read_text().replace("ray_num_workers: 2\n", ""))
    assert not any("USE_RAY" in w for w in prepare(cfg).warnings)


def test_the_ray_keys_are_declared_as_acting(manager):
    from tuneforge.config.validate import declared_keys
    from tuneforge.train.ray_launcher import RAY_KEYS

    declared = {name: k for name, k in declared_keys(manager).items() if name in RAY_KEYS}
    assert set(declared) == set(RAY_KEYS)
    assert all(k.effective for k in declared.values())


def test_what_cannot_run_on_several_processes_is_rejected_before_ray_starts(cfg, use_ray):
    """ray_num_workers counts as processes for the check-time rules (here layer-wise GaLore), so the run
    stops on the command line instead of in every Ray worker."""
    pytest.importorskip("ray")
    pytest.importorskip("galore_torch", reason="needs the optim extra")
    message = problems_of(cfg, "use_galore=true", "galore_layerwise=true")
    assert "galore_layerwise does not support distributed training (2 processes" in message
    prepare(cfg, ["use_galore=true", "galore_layerwise=true", "ray_num_workers=1"])


def test_the_memory_plan_counts_the_ray_workers(cfg, use_ray):
    pytest.importorskip("ray")
    from tuneforge.planner import plan_for

    prepared = prepare(cfg, ["ray_num_workers=3"])
    assert plan_for(prepared, use_device_memory=False).processes == 3
