"""Tested version ranges: pyproject.toml's ranges hold what the suite runs on; a required library outside
its range stops a run as in LLaMA-Factory unless DISABLE_VERSION_CHECK=1; `tuneforge env` names it.

An installed tuneforge whose recorded requirements exclude the installed transformers is made for real:
a tuneforge-*.dist-info folder first on sys.path, which importlib.metadata reads before the real one."""

from __future__ import annotations

import json
from importlib import metadata

import pytest
from packaging.requirements import Requirement

from tuneforge.cli.main import main
from tuneforge.errors import ConfigError
from tuneforge.plan import prepare
from tuneforge import versions

from .conftest import REPO


def test_pyproject_ranges_hold_every_installed_version_the_suite_runs_on():
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"]) + [r for extra in project["optional-dependencies"].values() for r in extra]
    checked, narrower = 0, []
    for line in lines:
        req = Requirement(line)
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            continue  # an extra this environment does not install
        checked += 1
        if not req.specifier.contains(version, prereleases=True):
            narrower.append(f"{line} (tested: {version})")
    assert checked >= 10 and not narrower, narrower


def test_the_tested_ranges_are_the_installed_requirements():
    ranges = versions.tested_ranges()
    assert ranges["transformers"].extra is None and ranges["transformers"].contains(metadata.version("transformers"))
    assert ranges["bitsandbytes"].extra == "quant"  # named by its own extra, not by dev which repeats it


@pytest.fixture
def old_range(tmp_path, monkeypatch):
    """This tuneforge says it was tested with transformers < 5 only."""
    info = tmp_path / "site" / "tuneforge-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tuneforge\nVersion: 0.0.1\n"
                                   "Requires-Dist: transformers<5,>=4.50\nRequires-Dist: pluggy>=1.7\n"
                                   "Requires-Dist: wandb<0.1; extra == \"tracking\"\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("DISABLE_VERSION_CHECK", raising=False)
    return metadata.version("transformers")


@pytest.fixture
def cfg(tmp_path, tiny_model):
    (tmp_path / "rows.json").write_text(json.dumps([{"instruction": "hi", "output": "hello"}] * 4))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"rows": {"file_name": "rows.json"}}))
    path = tmp_path / "c.yaml"
    path.write_text(f"model_name_or_path: {tiny_model}\nstage: sft\ndataset: rows\ndataset_dir: {tmp_path}\n"
                    f"template: llama3\noutput_dir: {tmp_path}/out\n")
    return path


def test_a_required_library_outside_its_range_stops_the_run_unless_disabled(cfg, old_range, monkeypatch):
    with pytest.raises(ConfigError) as error:
        prepare(cfg)
    assert (f"environment: transformers: {old_range} is installed, outside tuneforge's tested range <5,>=4.50: "
            "pip install 'transformers<5,>=4.50', or set DISABLE_VERSION_CHECK=1 to run anyway") in str(error.value)
    monkeypatch.setenv("DISABLE_VERSION_CHECK", "1")
    warnings = prepare(cfg).warnings
    assert f"transformers {old_range} is outside the tested range <5,>=4.50: running anyway (DISABLE_VERSION_CHECK=1)" in warnings


def test_env_names_what_is_outside_the_tested_range(old_range, capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert f"transformers: {old_range}  <- outside the tested range <5,>=4.50" in out
    outside = next(line for line in out.splitlines() if line.startswith("outside the tested range:"))
    assert f"transformers {old_range} (tested: <5,>=4.50)" in outside
    if "wandb: not installed" not in out:  # an optional library is reported with its extra
        assert "(tested: <0.1, extra tracking)" in outside
    assert "pluggy" not in outside
    assert "stops `train` unless DISABLE_VERSION_CHECK=1 (not set)" in out
