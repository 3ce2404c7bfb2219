"""`tuneforge plan`: exact parameter counts from the meta model, the knobs it advises, and its estimate
against the measured peak of real training steps on the tiny and small models (full, LoRA, QLoRA)."""

from __future__ import annotations

import json

import pytest

from tuneforge.cli.main import main as cli_main
from tuneforge.plan import prepare
from tuneforge.planner import estimate, parse_size, plan_for, planned_processes, shape_from_config
from tuneforge.planner.measure import measure_training_peak
from tuneforge.plugin_manager import PluginManager
from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

#: How far the estimated peak may be from the measured one, relative to the measured one. The planner
#: answers "fits or not" and ranks the knobs; its fit check keeps 10% + 512 MiB in reserve, and its
#: formulas land within 10% of the measured peaks of this matrix (bench/plan_accuracy.py prints them),
#: so 25% leaves room for other library versions without letting a wrong term (a missing gradient
#: copy, activations counted twice) through.
TOLERANCE = 0.25

#: The Llama-3-8B config.json (published), to plan a real size without its weights.
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "vocab_size": 128256,
    "max_position_embeddings": 8192,
}


def prepared_config(model, *overrides):
    return prepare(None, [f"model_name_or_path={model}", "stage=sft", "template=llama3", *overrides],
                   manager=PluginManager(autoload=False))


@pytest.fixture(scope="module")
def llama3_8b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama3-8b")
    (folder / "config.json").write_text(json.dumps(LLAMA3_8B))
    return folder


# --- exact counts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama3", "qwen2"])  # untied and tied embeddings
def test_meta_model_counts_equal_the_real_model(family):
    import torch
    from transformers import AutoModelForCausalLM

    path = cached_tiny_model(family, "tiny")
    shape = shape_from_config(prepared_config(path, "finetuning_type=full").config)
    real = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert shape.total_params == sum(p.numel() for p in real.parameters())
    assert shape.param_numels == {n: p.numel() for n, p in real.named_parameters()}
    real_linears = {n: (m.in_features, m.out_features) for n, m in real.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {m.name: (m.in_features, m.out_features) for m in shape.linears if not m.embedding} == real_linears
    assert shape.output_head == "lm_head"
    assert shape.tied_embeddings == (family == "qwen2")


@pytest.mark.parametrize("lora", [
    {},  # lora_target: all, r=8
    {"lora_rank": 4, "lora_target": "q_proj,v_proj"},
    {"use_dora": True, "lora_target": "q_proj,down_proj"},
    {"lora_rank": 2, "additional_target": "embed_tokens"},
    {"additional_target": "norm,lm_head"},
], ids=["all", "qv", "dora", "modules_to_save", "norms_and_head"])
def test_lora_trainable_count_equals_peft(tiny_model, lora):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneforge.plugins.methods.lora import lora_config

    prepared = prepared_config(tiny_model, "finetuning_type=lora", *(f"{k}={v}" for k, v in lora.items()))
    planned = estimate(shape_from_config(prepared.config), prepared.config, method="lora")
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = get_peft_model(base, lora_config(prepared.config, base))
    assert planned.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("freeze", [
    {}, {"freeze_trainable_layers": -1, "freeze_trainable_modules": "mlp"},
    {"freeze_trainable_layers": 1, "freeze_extra_modules": "embed_tokens,norm"},
], ids=["last2", "first-mlp", "extra"])
def test_freeze_trainable_count_equals_the_plugin(tiny_model, freeze):
    import torch
    from transformers import AutoModelForCausalLM

    from tuneforge.plugins.methods.freeze import apply

    prepared = prepared_config(tiny_model, "finetuning_type=freeze", *(f"{k}={v}" for k, v in freeze.items()))
    planned = estimate(shape_from_config(prepared.config), prepared.config, method="freeze")
    model = apply(type("Ctx", (), {"config": prepared.config})(), AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32))
    assert planned.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_llama3_8b_from_its_config_alone(llama3_8b):
    """The published counts of Llama-3-8B, and the byte arithmetic of a bf16 LoRA run, with no weights."""
    prepared = prepared_config(llama3_8b, "finetuning_type=lora", "bf16=true", "cutoff_len=1024",
                               "per_device_train_batch_size=1")
    plan = plan_for(prepared, processes=1, use_device_memory=False)
    assert plan.parameters == 8_030_261_248
    assert plan.trainable == 20_971_520  # r=8 on q,k,v,o,gate,up,down of 32 layers
    assert plan.weights.device == 8_030_261_248 * 2 + 20_971_520 * 4  # frozen bf16 + fp32 adapters
    assert plan.gradients.device == 20_971_520 * 4
    assert plan.optimizer.device == 20_971_520 * 8
    assert plan.total == plan.weights.device + plan.optimizer.device + plan.activations.device  # LoRA: activations win

    qlora = plan_for(prepared_config(llama3_8b, "finetuning_type=lora", "bf16=true", "quantization_bit=4"),
                     processes=1, use_device_memory=False)
    # 6.98 B linear weights in nf4 with double-quantized constants; embeddings, head and norms (1.05 B) in fp32,
    # as prepare_model_for_kbit_training casts them; the adapters in fp32
    linear, rest = 6_979_321_856, 1_050_939_392
    assert qlora.weights.device == int(linear * (0.5 + 1 / 64 + 4 / (64 * 256)) + rest * 4 + 20_971_520 * 4)


def test_zero_stages_and_offload_shard_what_they_should(llama3_8b, tmp_path):
    # prepare() refuses deepspeed where the package is not installed: plan the config with the key added after
    prepared = prepared_config(llama3_8b, "finetuning_type=full", "bf16=true")
    shape = shape_from_config(prepared.config)

    def plan(stage, processes, **offload):
        path = tmp_path / f"ds{stage}{''.join(offload)}.json"
        path.write_text(json.dumps({"zero_optimization": {"stage": stage, **{k: {"device": "cpu"} for k in offload}}}))
        return estimate(shape, prepared.config.with_values(deepspeed=str(path)), method="full", processes=processes)

    p = 8_030_261_248
    z1, z2, z3 = plan(1, 8), plan(2, 8), plan(3, 8)
    assert z1.optimizer.device == 12 * p // 8  # fp32 master copy + 2 fp32 Adam states (ZeRO's K = 12), sharded
    assert z1.gradients.device == 2 * p and z2.gradients.device == 2 * p // 8
    assert z2.weights.device == 2 * p  # DeepSpeed casts the model to bf16
    assert z3.weights.device < z2.weights.device / 4  # an eighth, plus the gathered layers
    offloaded = plan(3, 1, offload_optimizer=1, offload_param=1)
    assert offloaded.optimizer.device == 0 and offloaded.cpu >= 12 * p
    assert offloaded.total < z3.total


def test_processes_come_from_the_launcher_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("NPROC_PER_NODE", "4")
    monkeypatch.setenv("NNODES", "2")
    assert planned_processes() == 8
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert planned_processes() == 3


def test_parse_size():
    assert parse_size("24GiB") == 24 * 2**30
    assert parse_size("80 GB") == 80 * 10**9
    assert parse_size("512MiB") == 512 * 2**20
    with pytest.raises(ValueError):
        parse_size("lots")


# --- the command ------------------------------------------------------------------------------------------------


def test_plan_advises_knobs_when_it_does_not_fit(tiny_model, llama3_8b):
    prepared = prepared_config(tiny_model, "finetuning_type=full", "cutoff_len=4096", "per_device_train_batch_size=8",
                               "disable_gradient_checkpointing=true")
    plan = plan_for(prepared, processes=1, budget=parse_size("560MiB"))
    assert plan.fits is False
    savings = [k.saving for k in plan.advice]
    assert savings == sorted(savings, reverse=True) and all(s > 0 for s in savings)
    labels = [k.label for k in plan.advice]
    assert labels[0].startswith("per_device_train_batch_size: 1 with gradient_accumulation_steps: 8")
    assert any(label.startswith("gradient checkpointing on") for label in labels)
    assert any("cutoff_len: 2048" in label for label in labels)
    # the way to fit starts with the least intrusive knob and ends under the budget
    assert plan.path_to_fit[0].label.startswith("gradient checkpointing on")
    assert plan.path_to_fit[-1].fits_in <= plan.budget

    # full fine-tuning of an 8B model on one 80 GB GPU: the method is the knob that matters
    big = plan_for(prepared_config(llama3_8b, "finetuning_type=full", "bf16=true"), processes=1, budget=parse_size("80GB"))
    assert big.fits is False
    fitting = {k.label.split(" (")[0] for k in big.advice if k.fits_in <= big.budget}
    assert fitting >= {"LoRA instead of full", "4-bit base weights", "parameters and optimizer offloaded to CPU"}
    assert [k.label for k in big.path_to_fit] == ["LoRA instead of full (finetuning_type: lora)"]  # before offloading
    assert big.optimizer.device == 8 * 8_030_261_248  # AdamW: two fp32 states per parameter


def test_plan_command_table_json_and_exit_status(tiny_model, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"model_name_or_path: {tiny_model}\nstage: sft\nfinetuning_type: full\ntemplate: llama3\n"
                      "cutoff_len: 4096\nper_device_train_batch_size: 8\ndisable_gradient_checkpointing: true\n")
    assert cli_main(["plan", str(config), "--processes", "1", "--memory", "560MiB"]) == 1
    out = capsys.readouterr().out
    assert "does NOT fit" in out and "what saves the most" in out and "LoRA instead of full" in out
    assert cli_main(["plan", str(config), "--processes", "1", "--memory", "80GiB"]) == 0
    assert "fits" in capsys.readouterr().out
    assert cli_main(["plan", str(config), "--processes", "1", "--json", "finetuning_type=lora"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["per_device"]) == {"weights", "gradients", "optimizer", "activations", "peak"}
    assert data["method"] == "lora" and data["budget"] is None and data["fits"] is None
    assert data["trainable"] < data["parameters"]


def test_plan_measure_adds_the_measured_peak_to_the_json(tiny_model, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"model_name_or_path: {tiny_model}\nstage: sft\nfinetuning_type: lora\ntemplate: llama3\n"
                      "cutoff_len: 64\nper_device_train_batch_size: 1\n")
    assert cli_main(["plan", str(config), "--processes", "1", "--json", "--measure"]) == 0
    data = json.loads(capsys.readouterr().out)  # the trainer's own output went to stderr
    assert data["measured"]["weights"] == pytest.approx(data["per_device"]["weights"], rel=0.001)  # + RoPE buffers
    assert abs(data["measured"]["relative_error"]) <= TOLERANCE


def test_plan_reports_config_errors_like_check(tiny_model, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(f"model_name_or_path: {tiny_model}\nfinetuning_type: full\nquantization_bit: 4\nlora_rank: 0\n")
    assert cli_main(["check", str(config)]) == 2
    check_err = capsys.readouterr().err
    assert cli_main(["plan", str(config)]) == 2
    assert capsys.readouterr().err == check_err


# --- estimate vs measured ---------------------------------------------------------------------------------------

#: (size, micro batch, cutoff_len): the tiny model at a length where activations and the loss weigh as
#: much as the weights, the small one (34 M parameters) where weights and optimizer state dominate.
SIZES = {"tiny": (2, 256), "small": (1, 128)}
METHODS = {"full": ["finetuning_type=full"], "lora": ["finetuning_type=lora"],
           "qlora": ["finetuning_type=lora", "quantization_bit=4", "quantization_method=bitsandbytes"]}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("size", list(SIZES))
def test_estimate_is_within_tolerance_of_the_measured_peak(size, method):
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    batch, cutoff = SIZES[size]
    prepared = prepared_config(cached_tiny_model("llama3", size), *METHODS[method], f"cutoff_len={cutoff}",
                               f"per_device_train_batch_size={batch}")
    plan = plan_for(prepared, processes=1, use_device_memory=False)
    measured = measure_training_peak(prepared, steps=2)
    assert plan.weights.device == pytest.approx(measured.weights, rel=0.01)  # weights are counted, not estimated
    error = (plan.total - measured.peak) / measured.peak
    assert abs(error) <= TOLERANCE, (f"{size} {method}: estimated {plan.total / 2**20:.1f} MiB, measured "
                                     f"{measured.peak / 2**20:.1f} MiB ({100 * error:+.0f}%)")
