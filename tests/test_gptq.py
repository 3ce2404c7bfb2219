"""GPTQ on the tiny model, on CPU: quantize with calibration data (export_quantize), reload the checkpoint
(recognised from its config.json), train LoRA on it.

Needs the ``gptq`` extra (gptqmodel 7.6.0 + optimum 2.3.0), which `pip install -e ".[dev]"` does not
install (it pins numpy 2.2.x and pulls torchao); CI runs this file only where that extra is installed:
``pip install -c constraints.txt -e ".[dev,gptq]"``. Elsewhere every test here is skipped with that reason.
"""

from __future__ import annotations

import json

import pytest

from tuneforge import Requirement
from tuneforge.errors import ConfigError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager

from .test_quantizers import ROWS, assert_loss_falls, base_linears, train

pytestmark = pytest.mark.skipif(
    Requirement("gptqmodel", "").missing() or Requirement("optimum.gptq", "").missing(),
    reason="needs the gptq extra (gptqmodel 7.6.0 + optimum 2.3.0): pip install 'tuneforge[gptq]'",
)


@pytest.fixture
def dataset_dir(tmp_path):
    (tmp_path / "sums.json").write_text(json.dumps(ROWS))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"sums": {"file_name": "sums.json"}}))
    return tmp_path


@pytest.fixture
def gptq_model(tiny_model, dataset_dir, tmp_path):
    """The tiny model quantized to 4-bit GPTQ with the sums data as calibration set."""
    from tuneforge.train.context import RunContext

    prepared = prepare(None, [
        f"model_name_or_path={tiny_model}", f"dataset_dir={dataset_dir}", "export_quantization_bit=4",
        "export_quantization_dataset=sums", "export_quantization_nsamples=16", "export_quantization_maxlen=64",
        "gptq_group_size=64",
    ], manager=PluginManager(autoload=False))
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
    out = tmp_path / "gptq-4bit"
    prepared.manager.quantizer("gptq").export_quantize(ctx, str(tiny_model), str(out))
    return out


def test_gptq_quantize_reload_and_train_lora(gptq_model, dataset_dir, tmp_path):
    config = json.loads((gptq_model / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "gptq" and config["bits"] == 4 and config["group_size"] == 64
    assert (gptq_model / "tokenizer.json").is_file()

    ctx = train(gptq_model, dataset_dir, tmp_path, lora_target="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj")
    assert ctx.plan.prequantized == "gptq" and ctx.plan.quantizer.name == "gptq"
    assert_loss_falls(tmp_path / "out")
    layers = base_linears(ctx.model)
    assert len(layers) == 14
    for layer in layers.values():
        assert hasattr(layer, "qweight") and str(layer.qweight.dtype) == "torch.int32"
        # 4-bit: eight weights per int32
        assert layer.qweight.numel() * 8 == layer.in_features * layer.out_features
    assert all("lora_" in n for n, p in ctx.model.named_parameters() if p.requires_grad)

    with pytest.raises(ConfigError) as info:
        prepare(None, [f"model_name_or_path={gptq_model}", "quantization_bit=4"], manager=PluginManager(autoload=False))
    assert f"{gptq_model} is already quantized (gptq); remove quantization_bit" in str(info.value)


def test_export_quantize_needs_calibration_data(tiny_model, tmp_path):
    from tuneforge.errors import TuneforgeError
    from tuneforge.train.context import RunContext

    prepared = prepare(None, [f"model_name_or_path={tiny_model}", "export_quantization_bit=4"],
                       manager=PluginManager(autoload=False))
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
    with pytest.raises(TuneforgeError, match="export_quantization_bit needs calibration data: set export_quantization_dataset"):
        prepared.manager.quantizer("gptq").export_quantize(ctx, str(tiny_model), str(tmp_path / "out"))
