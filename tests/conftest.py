"""Shared fixtures. Tests never reach a model hub and never see the developer's own plugins."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("TUNEFORGE_DISABLE_PLUGIN_AUTOLOAD", "1")
# Tokenised-data cache: one fresh folder per test session (per xdist worker: tests count what the cache
# holds), never the user's ~/.cache.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if "TUNEFORGE_CACHE" not in os.environ or _WORKER:
    import tempfile

    os.environ["TUNEFORGE_CACHE"] = tempfile.mkdtemp(prefix=f"tuneforge-test-cache-{_WORKER or ''}")
if _WORKER:
    # The suite runs on two workers on a 2-core machine (README's test command): one thread per worker and
    # per subprocess, so the two never fight over the cores (oversubscribed OpenMP threads spin).
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

#: Files whose tests assert wall-clock limits (a server that stops within seconds, a browser that waits for
#: a page): they run alone, after the parallel part (`-m serial`; README's test command).
SERIAL_FILES = {"test_api.py", "test_webui.py", "test_webui_browser.py", "test_webui_vision_browser.py", "test_resume.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in SERIAL_FILES:
            item.add_marker(pytest.mark.serial)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ANCHOR = SHARED / "data-anchor"


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A 1-5 M parameter llama3-family model with its tokenizer, built offline once per machine."""
    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    return cached_tiny_model("llama3", "tiny")


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    """A fresh tokenised-data cache for one test (modules that want it for every test use
    ``pytestmark = pytest.mark.usefixtures("private_cache")``)."""
    monkeypatch.setenv("TUNEFORGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def data_context(**values):
    """A run context with the tokenizer and template loaded (no model), as `tuneforge data` builds it."""
    from tuneforge.plan import prepare
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.train.context import RunContext
    from tuneforge.train.model import load_tokenizer

    prepared = prepare(None, [f"{k}={v}" for k, v in values.items()], manager=PluginManager(autoload=False))
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
    load_tokenizer(ctx)
    return ctx


@pytest.fixture
def manager():
    """A fresh plugin manager with the built-ins only."""
    from tuneforge.plugin_manager import PluginManager

    return PluginManager(autoload=False)


def run_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: int = 600):
    """Run `tuneforge ARGS` in a subprocess, as a user would; returns CompletedProcess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "tuneforge.cli.main", *args],
        capture_output=True, text=True, env=full_env, cwd=cwd or REPO, timeout=timeout,
    )


PLUGIN_PACKAGES = REPO / "tests" / "plugin_packages"


def pip_install_plugin_package(name: str, target: Path) -> Path:
    """pip-install tests/plugin_packages/NAME into ``target`` as a user installs a plugin (built from a
    copy beside ``target``: setuptools writes build/ and *.egg-info next to what it builds); returns
    ``target``, the folder to put on PYTHONPATH."""
    import shutil
    import subprocess

    src = target.parent / f"{name}-src"
    shutil.copytree(PLUGIN_PACKAGES / name, src)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
           "--disable-pip-version-check", "--no-cache-dir", "--quiet", "--target", str(target), str(src)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"pip install {name} failed:\n{result.stdout}\n{result.stderr}"
    assert list(target.glob("*.dist-info")), f"{name}: no dist-info in {target}"
    return target


@pytest.fixture(scope="session")
def rewardfn_site(tmp_path_factory) -> Path:
    """tuneforge-rewardfn (reward function ``char_share``) installed with pip into a private folder."""
    return pip_install_plugin_package("tuneforge-rewardfn", tmp_path_factory.mktemp("tuneforge-rewardfn") / "site")
