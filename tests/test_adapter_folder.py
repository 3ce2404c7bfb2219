"""adapter_folder (LLaMA-Factory's, PEFT's subfolder): the adapter lives in that subfolder of each
adapter_name_or_path; the run loads it from there, and `check` names a missing one."""

from __future__ import annotations

import pytest
import torch

from tuneforge.errors import ConfigError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager

from .conftest import REPO

IDS = torch.tensor([[5, 17, 42, 99, 7]])


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    """A folder holding two LoRA adapters in subfolders (as a run with several adapters saves them)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    for seed, name in ((1, "sft"), (2, "dpo")):
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                               LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
        model.save_pretrained(root / name)
    return root


def loaded(tiny_model, **settings):
    from tuneforge.train.context import RunContext
    from tuneforge.train.model import load_model

    values = dict(model_name_or_path=str(tiny_model), template="llama3", finetuning_type="lora", stage="sft",
                  dataset="identity", dataset_dir=str(REPO / "data"), output_dir="unused", **settings)
    prepared = prepare(None, [f"{k}={v}" for k, v in values.items()], manager=PluginManager(autoload=False))
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
    load_model(ctx)
    return prepared.config, ctx.model


def test_adapter_folder_loads_the_adapter_in_that_subfolder(tiny_model, adapters):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config, model = loaded(tiny_model, adapter_name_or_path=str(adapters), adapter_folder="dpo")
    assert config.adapter_name_or_path == str(adapters / "dpo")
    with torch.no_grad():
        got = model(IDS).logits
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(adapters / "dpo"))(IDS).logits
        other = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(adapters / "sft"))(IDS).logits
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, other, atol=1e-3)


def test_check_names_a_missing_adapter_folder(tiny_model, adapters):
    with pytest.raises(ConfigError, match=rf"adapter_folder: {adapters} has no subfolder kto \(its adapter subfolders: dpo, sft\)"):
        loaded(tiny_model, adapter_name_or_path=str(adapters), adapter_folder="kto")
    with pytest.raises(ConfigError, match="adapter_folder: sft is a subfolder of each adapter_name_or_path, which is not set"):
        loaded(tiny_model, adapter_folder="sft")
