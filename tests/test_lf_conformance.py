"""The LLaMA-Factory conformance scoreboard (bench/lf_conformance.py) as a test.

Every example config of LLaMA-Factory (../shared/lf-examples) either passes `tuneforge check` or is
refused with what it needs; none ends in "unknown key" or a traceback, and the number that pass never
falls below the recorded floor. docs/compatibility.md is generated from the same table and must be
current. A handful of representative configs also train for 2 steps (slow).
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from .conftest import REPO

_spec = importlib.util.spec_from_file_location("lf_conformance", REPO / "bench" / "lf_conformance.py")
lf = importlib.util.module_from_spec(_spec)
sys.modules["lf_conformance"] = lf
_spec.loader.exec_module(lf)

#: Configs that pass `tuneforge check` today; raise it when more pass, never lower it.
CHECK_FLOOR = 45

pytestmark = pytest.mark.skipif(lf.available() is not None, reason=str(lf.available()))


@pytest.fixture(scope="module")
def results():
    return lf.check_all()


def test_no_config_ends_in_unknown_key_or_traceback(results):
    bad = [f"{r.path}: {r.check}: {r.line()}" for r in results if r.outcome in lf.BAD]
    assert not bad, "\n".join(bad)


def test_pass_count_does_not_regress(results):
    passing = [r.path for r in results if r.check == "ok"]
    assert len(passing) >= CHECK_FLOOR, f"only {len(passing)} configs pass check (floor {CHECK_FLOOR})"
    # Every config is accounted for: a known outcome, and a reason for each one that does not pass.
    assert {r.outcome for r in results} <= set(lf.OUTCOMES)
    assert all(r.reasons for r in results if r.check not in ("ok",)), "a refusal without a reason"
    assert sum(1 for r in results if r.kind in ("train", "chat", "export")) >= 60


def test_refusals_name_what_the_config_needs(results):
    by_path = {r.path: r for r in results}
    expect = {
        "ktransformers/train_lora/qwen3moe_lora_sft_kt.yaml": "KTransformers",
        "megatron/qwen3_moe_full.yaml": "Megatron",
        "megatron_bridge/llama3_sft.yaml": "Megatron",
        "extras/fp8/llama3_fp8_fsdp_sft.yaml": "FP8",
        "train_lora/qwen3_lora_sft_ds3.yaml": "deepspeed",
    }
    for path, needs in expect.items():
        r = by_path[path]
        assert r.check == "refused" and needs in r.line(), f"{path}: {r.check}: {r.line()}"


def test_compatibility_doc_is_current(results):
    rows = lf.key_table()
    lf.merge_train(results, lf.load_train_results())
    expected = lf.render_doc(results, rows)
    assert lf.DOC.is_file(), "docs/compatibility.md is missing: python bench/lf_conformance.py --write-docs"
    assert lf.DOC.read_text(encoding="utf-8") == expected, (
        "docs/compatibility.md is out of date: run python bench/lf_conformance.py --write-docs")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert lf.readme_line(results) in readme, f"README.md should say: {lf.readme_line(results)}"
    unknown = [name for _, name, status, _ in rows if status == "unknown"]
    assert all(status in ("acts", "warns", "refused", "unknown") for _, _, status, _ in rows)
    # Keys that appear in the examples are never unknown (they either act, warn or are refused).
    used = {name for name, group in lf.lf_keys().items() if group == "used by the examples"}
    assert not used & set(unknown), sorted(used & set(unknown))


def test_refused_engine_keys_fail_check_with_the_reason(tmp_path, tiny_model, monkeypatch):
    from tuneforge.errors import ConfigError
    from tuneforge.plan import prepare

    cfg = tmp_path / "kt.yaml"
    cfg.write_text(f"model_name_or_path: {tiny_model}\nstage: sft\ndataset: identity\ndataset_dir: {lf.ANCHOR}\n"
                   f"template: llama3\noutput_dir: {tmp_path}/out\nuse_kt: true\nkt_optimize_rule: x.yaml\n")
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    text = str(err.value)
    assert "kt.yaml:7: use_kt: needs KTransformers" in text and "also set: kt_optimize_rule" in text
    # The LLaMA-Factory defaults of those keys are not a request for the engine.
    cfg.write_text(cfg.read_text().replace("use_kt: true", "use_kt: false").replace("kt_optimize_rule: x.yaml\n", ""))
    prepare(cfg)
    monkeypatch.setenv("USE_RAY", "1")  # Ray Train is optional: without it, USE_RAY=1 names the install
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    with pytest.raises(ConfigError, match=r"needs Ray Train, which is not installed: pip install 'tuneforge\[ray\]'"):
        prepare(cfg)


#: One config per kind of run the examples hold: LoRA SFT, DPO, pretraining, full-parameter GaLore, OFT.
TRAINED = (
    "train_lora/qwen3_lora_sft.yaml",
    "train_lora/qwen3_lora_dpo.yaml",
    # (pt and GaLore train in tests/test_train_pipeline.py and tests/test_methods.py; kept out for CI time)
    "extras/oft/llama3_oft_sft.yaml",
)


@pytest.mark.slow
@pytest.mark.parametrize("path", TRAINED)
def test_representative_configs_train_two_steps(path):
    result = lf.check_one(lf.EXAMPLES / path)
    assert result.check == "ok", result.line()
    assert lf.train_one(result) == "runs"
