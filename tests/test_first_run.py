"""What a newcomer sees on a first run (issue 19, "Set-up and first run"): cache messages that say
what the run does, no third-party notes that read as errors, a loss plot whose smoothed curve follows
the raw one, and a quickstart that installs only the core dependencies."""

from __future__ import annotations

import json
import logging
import math
import random
import re

import warnings

import pytest

from tuneforge.data.dataset import build_datasets
from tuneforge.data.doctor import run_doctor
from tuneforge.train.noise import BNB_LOGGER, silence_known_noise
from tuneforge.train.outputs import plot_loss, smooth_curve

from .conftest import REPO
from .test_data_pipeline import make_ctx, rows  # noqa: F401 (rows is a fixture)

pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture
def data(tmp_path):
    (tmp_path / "sums.json").write_text(json.dumps(rows(12)))
    return tmp_path


def cache_line(out: str) -> str:
    return next(line.strip() for line in out.splitlines() if line.strip().startswith("cache:"))


def test_cache_messages_say_what_overwrite_cache_does(tiny_model, data, capsys):
    build_datasets(make_ctx(tiny_model, data, dataset="sums.json"), "supervised")
    assert "(set overwrite_cache: true to rebuild)" in capsys.readouterr().out
    build_datasets(make_ctx(tiny_model, data, dataset="sums.json", overwrite_cache=True), "supervised")
    out = capsys.readouterr().out
    assert "saved tokenised dataset to cache" in out and "set overwrite_cache: true" not in out
    assert "(overwrite_cache: true rebuilds it on every run; set it to false to reuse it)" in out


def test_data_doctor_says_whether_training_will_load_the_cache(tiny_model, data, capsys):
    def doctor(**settings) -> str:
        assert run_doctor(make_ctx(tiny_model, data, dataset="sums.json", **settings), "supervised") == 0
        return cache_line(capsys.readouterr().out)

    assert doctor().endswith("(absent: training will build it)")
    build_datasets(make_ctx(tiny_model, data, dataset="sums.json"), "supervised")
    capsys.readouterr()
    assert doctor().endswith("(present: training will load it)")
    assert doctor(overwrite_cache=True).endswith("(present, but overwrite_cache: true: training will rebuild it)")
    saved = data / "tokenized"
    line = doctor(tokenized_path=str(saved))  # not there yet: training builds (here: loads the cache), then saves it
    assert line.endswith(f"(present: training will load it); training then saves it to tokenized_path {saved}")
    build_datasets(make_ctx(tiny_model, data, dataset="sums.json", tokenized_path=str(saved)), "supervised")
    capsys.readouterr()
    assert doctor(tokenized_path=str(saved)).startswith(f"cache: not used: training loads tokenized_path {saved} as it is")


def test_known_third_party_noise_is_silenced_and_nothing_else():
    silence_known_noise()
    silence_known_noise()  # idempotent
    logger = logging.getLogger(BNB_LOGGER)
    assert len(logger.filters) == len({type(f) for f in logger.filters})

    def shown(message: str, *args) -> bool:
        record = logger.makeRecord(BNB_LOGGER, logging.WARNING, __file__, 1, message, args, None)
        return all(f.filter(record) for f in logger.filters)

    note = "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure you already `pip install kernels`"
    assert not shown(note, ModuleNotFoundError("No module named 'kernels'"))
    assert shown(note, RuntimeError("kernel hub version mismatch"))  # a real failure still shows
    assert shown("something else")
    with warnings.catch_warnings(record=True) as caught:
        silence_known_noise()  # catch_warnings reset the filters: install them inside it
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        warnings.warn("`other_thing` is deprecated", FutureWarning)
    assert [str(w.message) for w in caught] == ["`other_thing` is deprecated"]


def test_smoothing_follows_few_points_and_smooths_many():
    falling = [4.6 * (0.1 / 4.6) ** (i / 8) for i in range(9)]  # 9 logged points, 4.6 -> 0.1
    smoothed = smooth_curve(falling)
    assert len(smoothed) == 9
    assert all(abs(s - v) <= 0.05 * max(v, 0.1) for s, v in zip(smoothed, falling)), smoothed
    rng = random.Random(0)
    trend = [3 * math.exp(-i / 60) + 0.2 for i in range(300)]
    noisy = [t + rng.gauss(0, 0.3) for t in trend]
    smoothed = smooth_curve(noisy)

    def error(curve):
        return sum(abs(c - t) for c, t in zip(curve, trend)) / len(trend)

    assert error(smoothed) < error(noisy) / 2  # 300 points are smoothed
    assert abs(sum(smoothed[-20:]) / 20 - sum(trend[-20:]) / 20) < 0.15  # and do not lag behind the trend


def test_plot_loss_draws_the_smoothed_curve(tmp_path):
    pytest.importorskip("matplotlib")
    history = [{"step": i + 1, "loss": 4.6 * (0.1 / 4.6) ** (i / 8)} for i in range(9)]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert plot_loss(tmp_path) == [tmp_path / "training_loss.png"]
    assert (tmp_path / "training_loss.png").stat().st_size > 1000


def test_quickstart_installs_only_the_core_dependencies():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**Quickstart**"):readme.index("**Test suite**")]
    command = section[section.index("```bash"):section.index("```", section.index("```bash") + 3)]
    install = re.findall(r"pip install -e (\S+)", command)
    assert install == ["."], install  # no extra: not dev (gradio, mlflow, wandb, playwright, ...)
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    core = {re.split(r"[<>=!~ \[]", d)[0].lower() for d in project["dependencies"]}
    config = (REPO / "examples" / "quickstart" / "identity_sft.yaml").read_text(encoding="utf-8")
    assert "plot_loss: true" in config and "matplotlib" in core  # the loss curve the README points at
    assert "finetuning_type: lora" in config  # taught with LoRA, as LLaMA-Factory's walkthroughs do
