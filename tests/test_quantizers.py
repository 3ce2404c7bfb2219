"""Quantizer plugins on the tiny model, on CPU: QLoRA with bitsandbytes 4-bit and 8-bit, HQQ and quanto
with LoRA on top, and every combination `check` rejects before anything loads."""

from __future__ import annotations

import json
import types

import pytest

from tuneforge import QuantizerSpec, Requirement, hookimpl
from tuneforge.errors import ConfigError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager

from .conftest import run_cli

ROWS = [
    {"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
    for a in range(6) for b in range(6)
]
#: Every linear layer of the tiny llama but the head (named, because HQQLinear is not an nn.Linear).
LINEARS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
IDS = [[5, 17, 42, 99, 7, 300, 12]]


def _missing(module: str) -> bool:
    return Requirement(module, "").missing()


needs_bnb = pytest.mark.skipif(_missing("bitsandbytes"), reason="needs the quant extra: pip install 'tuneforge[quant]'")
needs_hqq = pytest.mark.skipif(_missing("hqq"), reason="needs the quant extra: pip install 'tuneforge[quant]'")
needs_quanto = pytest.mark.skipif(_missing("optimum.quanto"), reason="needs the quant extra: pip install 'tuneforge[quant]'")


@pytest.fixture
def dataset_dir(tmp_path):
    (tmp_path / "sums.json").write_text(json.dumps(ROWS))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"sums": {"file_name": "sums.json"}}))
    return tmp_path


def settings(tiny_model, dataset_dir, tmp_path, **overrides) -> list[str]:
    base = dict(
        model_name_or_path=str(tiny_model), template="llama3", dataset="sums", dataset_dir=str(dataset_dir),
        output_dir=str(tmp_path / "out"), cutoff_len=64, per_device_train_batch_size=4, max_steps=12,
        learning_rate=5e-3, lora_rank=4, logging_steps=1, report_to="none", disable_tqdm=True,
        overwrite_output_dir=True,
    )
    base.update(overrides)
    return [f"{k}={v}" for k, v in base.items()]


def train(tiny_model, dataset_dir, tmp_path, **overrides):
    from tuneforge.train.pipeline import run_training

    prepared = prepare(None, settings(tiny_model, dataset_dir, tmp_path, **overrides), manager=PluginManager(autoload=False))
    return run_training(prepared)


def losses(output_dir) -> list[float]:
    rows = [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def assert_loss_falls(output_dir):
    curve = losses(output_dir)
    assert len(curve) == 12 and sum(curve[-3:]) / 3 < sum(curve[:3]) / 3 - 0.5, curve


def logits(model):
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(IDS)).logits


def load_for_inference(**overrides):
    """The model as `tuneforge chat` would load it: training=False, adapter from adapter_name_or_path."""
    from tuneforge.train.context import RunContext
    from tuneforge.train.model import load_model

    prepared = prepare(None, [f"{k}={v}" for k, v in overrides.items()], manager=PluginManager(autoload=False))
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
    return load_model(ctx)[0]


def base_linears(model) -> dict:
    """Full name -> module for the decoder's projections (inside PEFT's wrappers, the base layers)."""
    names = tuple(LINEARS.split(","))
    out = {}
    for name, module in model.named_modules():
        if name.split(".")[-1] in names:
            out[name] = getattr(module, "base_layer", module)
    return out


# --- bitsandbytes ---------------------------------------------------------------------------------------------


@needs_bnb
@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_bitsandbytes_trains_and_the_adapter_reloads_onto_a_fresh_quantized_base(bits, tiny_model, dataset_dir, tmp_path):
    import bitsandbytes as bnb
    import torch

    ctx = train(tiny_model, dataset_dir, tmp_path, quantization_bit=bits)
    out = tmp_path / "out"
    assert_loss_falls(out)
    assert ctx.plan.quantizer.name == "bitsandbytes"

    # the base's linear layers really are quantized: module types, storage dtype and bytes
    layers = base_linears(ctx.model)
    assert len(layers) == 14
    for name, layer in layers.items():
        weight = layer.weight
        if bits == 4:
            assert isinstance(layer, bnb.nn.Linear4bit), name
            assert weight.dtype == torch.uint8 and weight.quant_state.quant_type == "nf4"
            assert weight.numel() * weight.element_size() == layer.in_features * layer.out_features // 2
        else:
            assert isinstance(layer, bnb.nn.Linear8bitLt), name
            assert weight.dtype == torch.int8
            assert weight.numel() * weight.element_size() == layer.in_features * layer.out_features
        assert not weight.requires_grad
    trainable = {n for n, p in ctx.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    trained = logits(ctx.model)
    reloaded_model = load_for_inference(model_name_or_path=tiny_model, template="llama3", quantization_bit=bits,
                                        adapter_name_or_path=out)
    assert sum(isinstance(m, bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt) for m in reloaded_model.modules()) == 14
    assert torch.equal(trained, logits(reloaded_model))
    # and the adapter really changed the model
    base_only = load_for_inference(model_name_or_path=tiny_model, template="llama3", quantization_bit=bits)
    assert not torch.allclose(trained, logits(base_only))


@needs_bnb
def test_bnb_is_llamafactorys_name_for_bitsandbytes_fp4_and_no_double_quant(tiny_model, dataset_dir, tmp_path):
    import bitsandbytes as bnb

    ctx = train(tiny_model, dataset_dir, tmp_path, quantization_bit=4, quantization_method="bnb", quantization_type="fp4",
                double_quantization=False, max_steps=1)
    assert ctx.plan.quantizer.name == "bnb"
    layer = next(m for m in ctx.model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert layer.weight.quant_state.quant_type == "fp4" and layer.weight.quant_state.nested is False


@needs_bnb
def test_a_checkpoint_saved_quantized_is_recognised_and_trained_as_it_is(tiny_model, dataset_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    saved = tmp_path / "bnb4"
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32))
    model.save_pretrained(saved)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(saved)

    prepared = prepare(None, settings(saved, dataset_dir, tmp_path), manager=PluginManager(autoload=False))
    assert prepared.plan.prequantized == "bitsandbytes" and prepared.plan.quantizer.name == "bitsandbytes"
    assert ("quantizer", "checkpoint already quantized (bitsandbytes); bitsandbytes") in [r[:2] for r in prepared.plan.describe()]
    ctx = train(saved, dataset_dir, tmp_path, max_steps=2)
    assert trainable_names(ctx.model) and all("lora_" in n for n in trainable_names(ctx.model))

    with pytest.raises(ConfigError) as info:
        prepare(None, settings(saved, dataset_dir, tmp_path, quantization_bit=8), manager=PluginManager(autoload=False))
    assert f"{saved} is already quantized (bitsandbytes); remove quantization_bit" in str(info.value)
    # quantized weights cannot be fully tuned, even without quantization_bit
    with pytest.raises(ConfigError) as info:
        prepare(None, settings(saved, dataset_dir, tmp_path, finetuning_type="full"), manager=PluginManager(autoload=False))
    assert "finetuning_type: full updates the base weights, which are quantized (the checkpoint is already quantized " \
           "(bitsandbytes))" in str(info.value)
    assert "set model_name_or_path to the original full-precision model" in str(info.value)


def trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


# --- HQQ and quanto -------------------------------------------------------------------------------------------


@needs_hqq
def test_hqq_4bit_with_lora_trains(tiny_model, dataset_dir, tmp_path):
    import torch
    from hqq.core.quantize import HQQLinear

    ctx = train(tiny_model, dataset_dir, tmp_path, quantization_bit=4, quantization_method="hqq", hqq_group_size=64,
                lora_target=LINEARS)
    assert_loss_falls(tmp_path / "out")
    layers = base_linears(ctx.model)
    assert len(layers) == 14 and all(isinstance(m, HQQLinear) for m in layers.values())
    layer = layers["base_model.model.model.layers.0.self_attn.q_proj"]
    assert layer.meta["nbits"] == 4 and layer.meta["group_size"] == 64
    assert layer.W_q.dtype == torch.uint8 and layer.W_q.numel() == layer.in_features * layer.out_features // 2
    assert type(ctx.model.get_output_embeddings()) is torch.nn.Linear  # the head stays in full precision
    assert all("lora_" in n for n in trainable_names(ctx.model))


@needs_quanto
def test_quanto_int8_with_lora_trains(tiny_model, dataset_dir, tmp_path):
    import torch
    from optimum.quanto import QLinear

    ctx = train(tiny_model, dataset_dir, tmp_path, quantization_bit=8, quantization_method="quanto")
    assert_loss_falls(tmp_path / "out")
    layers = base_linears(ctx.model)
    assert len(layers) == 14 and all(isinstance(m, QLinear) for m in layers.values())
    assert all(m.weight._data.dtype == torch.int8 for m in layers.values())
    assert all("lora_" in n for n in trainable_names(ctx.model))


# --- what `check` rejects, before loading anything --------------------------------------------------------------


def problems(tiny_model, *overrides: str, manager=None) -> str:
    with pytest.raises(ConfigError) as info:
        prepare(None, [f"model_name_or_path={tiny_model}", "template=llama3", *overrides],
                manager=manager or PluginManager(autoload=False))
    return str(info.value)


@needs_bnb
@pytest.mark.parametrize("setting, expected", [
    ("finetuning_type=full", "method full: finetuning_type: full updates the base weights, which are quantized "
                             "(quantization_bit: 4 with bitsandbytes) and cannot be trained; train adapters on them instead "
                             "(QLoRA: finetuning_type: lora), or remove quantization_bit"),
    ("finetuning_type=freeze", "finetuning_type: freeze updates the base weights, which are quantized"),
    pytest.param("use_galore=true", "use_galore: true updates the base weights, which are quantized",
                 marks=pytest.mark.skipif(_missing("galore_torch"), reason="needs the optim extra (GaLore)")),
    ("pissa_init=true", "method lora: PiSSA (pissa_init) initialises the adapter from an SVD of the "
                        "full-precision weights and writes the residual back into them, which cannot be done on quantized "
                        "weights (quantization_bit: 4 with bitsandbytes); use plain LoRA, or remove quantization_bit"),
    ("finetuning_type=pissa", "PiSSA (pissa_init) initialises the adapter"),
    ("adapter_name_or_path=a,b", "adapter_name_or_path: merging a into quantized weights (quantization_bit: 4 with "
                                 "bitsandbytes) is not supported; merge the adapters into the unquantized base first"),
])
def test_check_rejects_what_cannot_run_on_quantized_weights(tiny_model, setting, expected):
    assert expected in problems(tiny_model, "quantization_bit=4", setting)


@needs_bnb
def test_export_merging_into_a_quantized_base_says_export_from_the_unquantized_base(tiny_model):
    message = problems(tiny_model, "quantization_bit=4", "adapter_name_or_path=saves/lora", "export_dir=merged")
    assert ("export merges the adapter into the base model, which cannot be done on quantized weights (quantization_bit: 4 "
            "with bitsandbytes): export from the unquantized base instead (remove quantization_bit); set "
            "export_quantization_bit to quantize the merged model") in message


@needs_hqq
def test_hqq_rejects_a_bad_group_size_and_a_saved_hqq_checkpoint(tiny_model, tmp_path):
    message = problems(tiny_model, "quantization_bit=4", "quantization_method=hqq", "hqq_group_size=12")
    assert "quantizer hqq: hqq_group_size must be a multiple of 8 (or 0 for whole rows), not 12" in message
    config = _tiny_config(tiny_model)
    config["quantization_config"] = {"quant_method": "hqq"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert ("quantizer hqq: a checkpoint saved with HQQ weights cannot be loaded: transformers 5 does not restore HQQ "
            "layers") in problems(tmp_path)


def test_loftq_on_quantized_weights_is_rejected(tiny_model):
    """LoftQ quantizes full-precision weights itself (PEFT init_lora_weights: loftq)."""
    from tuneforge.config.model import Config
    from tuneforge.plugins.methods.lora import quantized_weight_problems

    config = Config({"model_name_or_path": str(tiny_model), "quantization_bit": 4, "init_lora_weights": "loftq"},
                    {"quantization_method": "bitsandbytes", "finetuning_type": "lora"})
    plan = prepare(None, [f"model_name_or_path={tiny_model}", "template=llama3"], manager=PluginManager(autoload=False)).plan
    assert quantized_weight_problems(config, plan) == [
        "LoftQ (init_lora_weights: loftq) quantizes the full-precision weights itself while it initialises the adapter, "
        "so it needs the unquantized model (quantization_bit: 4 with bitsandbytes); remove quantization_bit"]
    assert quantized_weight_problems(config.with_values(quantization_bit=None), plan) == []


@pytest.mark.parametrize("method, bits, supported", [
    ("bitsandbytes", 3, "4, 8"), ("bnb", 2, "4, 8"), ("hqq", 7, "1, 2, 3, 4, 5, 6, 8"), ("quanto", 3, "2, 4, 8"),
])
def test_an_unsupported_bit_width_lists_the_supported_ones(tiny_model, method, bits, supported):
    message = problems(tiny_model, f"quantization_bit={bits}", f"quantization_method={method}")
    assert f"quantization_bit: {method} supports {supported} bits, not {bits}" in message


def test_a_quantizer_whose_library_is_missing_names_the_pip_command(tiny_model):
    module = types.ModuleType("q")

    @hookimpl
    def tuneforge_quantizers():
        return [QuantizerSpec(name="needs-lib", description="d", bits=(4,),
                              requires=(Requirement("no_such_quant_lib_xyz", "pip install 'no-such-quant-lib==1.0'"),))]

    module.tuneforge_quantizers = tuneforge_quantizers
    manager = PluginManager(autoload=False, extra_plugins=[("q", module)])
    message = problems(tiny_model, "quantization_bit=4", "quantization_method=needs-lib", manager=manager)
    assert ("quantization_method: quantizer 'needs-lib' is unavailable: missing no_such_quant_lib_xyz "
            "(pip install 'no-such-quant-lib==1.0')") in message


def test_eetq_is_unavailable_on_cpu_with_its_reason(tiny_model, monkeypatch):
    from tuneforge.plugins.quantizers import eetq

    monkeypatch.setattr(eetq, "_has_cuda_driver", lambda: False)
    manager = PluginManager(autoload=False)
    assert manager.entry("quantizer", "eetq").status == (
        "unavailable: EETQ's int8 kernels run only on a CUDA GPU, and this machine has none "
        "(use bitsandbytes 8-bit on CPU)")
    message = problems(tiny_model, "quantization_bit=8", "quantization_method=eetq", manager=manager)
    assert "quantizer 'eetq' is unavailable: EETQ's int8 kernels run only on a CUDA GPU" in message


def test_gptq_does_not_quantize_on_load(tiny_model):
    if Requirement("gptqmodel", "").missing():
        message = problems(tiny_model, "quantization_bit=4", "quantization_method=gptq")
        assert "quantizer 'gptq' is unavailable: missing gptqmodel (pip install 'tuneforge[gptq]')" in message
    else:
        message = problems(tiny_model, "quantization_bit=4", "quantization_method=gptq")
        assert "GPTQ needs calibration data and does not quantize on load: quantize the model with `tuneforge export`" in message


@pytest.mark.parametrize("quant_method, plugin", [
    ("gptq", "gptq"), ("awq", "awq"), ("bitsandbytes", "bitsandbytes"), ("hqq", "hqq"), ("quanto", "quanto"),
    ("eetq", "eetq"),
])
def test_an_already_quantized_checkpoint_is_recognised_and_quantizing_it_again_is_an_error(tiny_model, tmp_path, quant_method,
                                                                                         plugin):
    config = _tiny_config(tiny_model)
    config["quantization_config"] = {"quant_method": quant_method, "bits": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    message = problems(tmp_path, "quantization_bit=4")
    assert f"{tmp_path} is already quantized ({quant_method}); remove quantization_bit (and quantization_method)" in message
    manager = PluginManager(autoload=False)
    entry = next(e for e in manager.entries("quantizer") if e.spec.recognizes and e.spec.recognizes(config["quantization_config"]))
    assert entry.name == plugin


def test_the_plan_reports_a_recognised_checkpoint(tiny_model, tmp_path):
    config = _tiny_config(tiny_model)
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128}
    (tmp_path / "config.json").write_text(json.dumps(config))
    manager = PluginManager(autoload=False)
    if manager.entry("quantizer", "awq").status != "active":
        message = problems(tmp_path)
        assert "model_name_or_path: the checkpoint is quantized with awq; quantizer 'awq' is unavailable: missing gptqmodel" in message
    else:
        plan = prepare(None, [f"model_name_or_path={tmp_path}", "template=llama3"], manager=manager).plan
        assert plan.prequantized == "awq" and plan.quantizer.name == "awq"


def _tiny_config(tiny_model) -> dict:
    return json.loads((tiny_model / "config.json").read_text())


def test_show_says_which_gptq_versions_it_needs():
    result = run_cli("show", "quantizer", "gptq")
    assert result.returncode == 0, result.stderr
    assert "Needs gptqmodel 7.6.0 and optimum 2.3.0: pip install 'tuneforge[gptq]'" in result.stdout
    assert "gptq_cpu_workers" in result.stdout and "bits: 2, 3, 4, 8" in result.stdout


def test_gptq_version_outside_the_tested_range_is_unavailable(monkeypatch):
    from tuneforge.plugins.quantizers import _gptqmodel, gptq

    versions = {"gptqmodel": "6.0.0", "optimum": "2.3.0"}
    monkeypatch.setattr(_gptqmodel.metadata, "version", lambda dist: versions[dist])
    assert gptq.unavailable_reason() == "gptqmodel 6.0.0 is installed; this plugin needs gptqmodel >=7.6,<8 (pip install 'tuneforge[gptq]')"
    versions["gptqmodel"] = "7.6.0"
    assert gptq.unavailable_reason() is None


def test_gptq_cpu_workers_are_at_least_two(monkeypatch):
    from tuneforge.plugins.quantizers import gptq

    monkeypatch.delenv("GPTQMODEL_CPU_WORKERS", raising=False)
    monkeypatch.setattr(gptq.os, "sched_getaffinity", lambda pid: {0}, raising=False)  # the same os module
    gptq.set_cpu_workers()
    assert gptq.os.environ["GPTQMODEL_CPU_WORKERS"] == "2"
    monkeypatch.setenv("GPTQMODEL_CPU_WORKERS", "6")  # the user's own setting wins
    gptq.set_cpu_workers()
    assert gptq.os.environ["GPTQMODEL_CPU_WORKERS"] == "6"


def test_calibration_samples_pack_short_rows_into_full_windows(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from tuneforge.plugins.quantizers.gptq import calibration_samples, calibration_texts

    (tmp_path / "calib.json").write_text(json.dumps(ROWS))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"sums": {"file_name": "calib.json"}}))
    texts = calibration_texts("sums", str(tmp_path))
    assert texts == calibration_texts(str(tmp_path / "calib.json")) and len(texts) == len(ROWS)
    assert texts[0] == "What is 0 plus 0?\n0 plus 0 is 0."
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    samples = calibration_samples(texts, tokenizer, nsamples=4, maxlen=32)
    assert len(samples) == 4 and all(len(s["input_ids"]) == 32 == sum(s["attention_mask"]) for s in samples)
    assert samples == calibration_samples(texts, tokenizer, nsamples=4, maxlen=32)  # seeded
    few = calibration_samples(texts[:2], tokenizer, nsamples=8, maxlen=32)
    assert 1 <= len(few) < 8
