"""Every fine-tuning method on the tiny model: it trains (sft and pt), trains what it promises, uses the
optimizer it claims, saves what reloads with PEFT alone, and `check` rejects what cannot work."""

from __future__ import annotations

import json

import pytest
import torch

from tuneforge.errors import ConfigError, TuneforgeError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager
from tuneforge.train.context import RunContext
from tuneforge.train.model import load_model
from tuneforge.train.pipeline import run_training

from .conftest import run_cli

ROWS = [
    {"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
    for a in range(6) for b in range(6)
]

#: method id -> overrides. LoRA+ is LoRA with an optimizer of its own; the optimizer methods are shown
#: both by name and by LLaMA-Factory's flag.
METHODS = {
    "lora": dict(finetuning_type="lora", lora_rank=4),
    "dora": dict(finetuning_type="dora", lora_rank=4),
    "rslora": dict(finetuning_type="rslora", lora_rank=4),
    "pissa": dict(finetuning_type="pissa", lora_rank=4, pissa_iter=-1),
    "loraplus": dict(finetuning_type="lora", lora_rank=4, loraplus_lr_ratio=4),
    "freeze": dict(finetuning_type="freeze", freeze_trainable_layers=1),
    "full": dict(finetuning_type="full", learning_rate=1e-3),
    "galore": dict(finetuning_type="galore", galore_rank=4, galore_update_interval=3, learning_rate=2e-3),
    "galore_layerwise": dict(use_galore=True, finetuning_type="full", galore_layerwise=True, galore_rank=4,
                             learning_rate=2e-3),
    "apollo": dict(use_apollo=True, apollo_rank=4, apollo_update_interval=3, learning_rate=2e-3),
    "badam": dict(use_badam=True, finetuning_type="full", badam_switch_interval=2, learning_rate=2e-3),
    "badam_ratio": dict(finetuning_type="badam", badam_mode="ratio", badam_update_ratio=0.5),
}
STAGES = {
    "sft": dict(stage="sft", dataset="sums", cutoff_len=64),
    "pt": dict(stage="pt", dataset="text", cutoff_len=32),
}
IDS = torch.tensor([[5, 17, 42, 99, 7, 300, 12]])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    (path / "sums.json").write_text(json.dumps(ROWS))
    (path / "text.jsonl").write_text("\n".join(json.dumps({"text": f"{r['instruction']} {r['output']}"}) for r in ROWS))
    (path / "dataset_info.json").write_text(json.dumps({
        "sums": {"file_name": "sums.json"},
        "text": {"file_name": "text.jsonl", "columns": {"prompt": "text"}},
    }))
    return path


#: method id -> the optional library it needs (the optim extra: pip install 'tuneforge[optim]')
LIBRARIES = {"galore": "galore_torch", "galore_layerwise": "galore_torch", "apollo": "apollo_torch",
             "badam": "badam", "badam_ratio": "badam"}


def needs(method: str) -> None:
    if method in LIBRARIES:
        pytest.importorskip(LIBRARIES[method], reason="needs the optim extra: pip install 'tuneforge[optim]'")


def _overrides(tiny_model, data_dir, **settings) -> list[str]:
    base = dict(
        model_name_or_path=str(tiny_model), template="llama3", dataset_dir=str(data_dir), per_device_train_batch_size=4,
        max_steps=6, learning_rate=5e-3, logging_steps=1, report_to="none", disable_tqdm=True, overwrite_output_dir=True,
        save_steps=1000, **STAGES["sft"],
    )
    base.update(settings)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def trained(tiny_model, data_dir, tmp_path_factory):
    """(ctx, output_dir) of one short run per (method, stage), shared by the tests of this module."""
    cache = {}

    def run(method: str, stage: str = "sft", **extra):
        needs(method)
        key = (method, stage, tuple(sorted(extra.items())))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"{method}-{stage}")
            settings = {**STAGES[stage], **METHODS[method], **extra, "output_dir": str(out)}
            prepared = prepare(None, _overrides(tiny_model, data_dir, **settings), manager=PluginManager(autoload=False))
            cache[key] = (run_training(prepared), out)
        return cache[key]

    return run


def loaded(tiny_model, data_dir, **settings) -> RunContext:
    """The model as the method prepares it for training, before any step."""
    prepared = prepare(None, _overrides(tiny_model, data_dir, output_dir="unused", **settings), manager=PluginManager(autoload=False))
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=True)
    load_model(ctx)
    return ctx


def losses(out) -> list[float]:
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def optimizer_of(ctx):
    optimizer = ctx.extras["trainer"].optimizer
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper


def base_model(tiny_model):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model).eval()


def linears(model):
    head = model.get_output_embeddings()
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head]


# --- every method trains -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", sorted(STAGES))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_trains_and_the_loss_falls(trained, method, stage):
    ctx, out = trained(method, stage)
    curve = losses(out)
    assert len(curve) == 6 and all(c == c for c in curve), curve
    assert sum(curve[-2:]) / 2 < sum(curve[:2]) / 2, curve
    assert ctx.plan.method.name == {"loraplus": "lora", "galore_layerwise": "galore", "badam_ratio": "badam"}.get(method, method)


# --- LoRA family -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "rslora", "pissa", "dora"])
def test_lora_family_trainable_count_follows_from_shapes(trained, tiny_model, method):
    ctx, out = trained(method)
    layers = linears(base_model(tiny_model))
    expected = sum(4 * (m.in_features + m.out_features) for m in layers)
    if method == "dora":
        expected += sum(m.out_features for m in layers)  # one magnitude per output feature
    assert sum(p.numel() for p in trainable(ctx.model).values()) == expected
    if method == "dora":
        assert any("lora_magnitude_vector" in n for n in trainable(ctx.model))


@pytest.mark.parametrize("method, key, value", [
    ("lora", "use_dora", False), ("dora", "use_dora", True), ("rslora", "use_rslora", True),
    ("pissa", "init_lora_weights", "pissa"),
])
def test_adapter_config_shows_the_variant(trained, method, key, value):
    _, out = trained(method)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config[key] == value
    assert config["r"] == 4 and config["lora_alpha"] == 8  # lora_alpha defaults to 2 x rank


@pytest.mark.parametrize("method", ["lora", "dora", "rslora", "pissa"])
def test_saved_adapter_reloads_with_peft_alone_to_identical_logits(trained, tiny_model, method):
    from peft import PeftModel

    ctx, out = trained(method)
    model = ctx.model.eval()
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
        reloaded = PeftModel.from_pretrained(base_model(tiny_model), out).eval()(input_ids=IDS).logits
    assert torch.equal(expected, reloaded)


def test_rslora_scales_by_the_square_root_of_the_rank(trained):
    from peft.tuners.lora import LoraLayer

    ctx, _ = trained("rslora")
    layer = next(m for m in ctx.model.modules() if isinstance(m, LoraLayer))
    assert layer.scaling["default"] == pytest.approx(8 / 4 ** 0.5)


def test_pissa_initial_output_equals_the_base_model(tiny_model, data_dir):
    ctx = loaded(tiny_model, data_dir, finetuning_type="pissa", lora_rank=4, pissa_iter=2)
    with torch.no_grad():
        initial = ctx.model.eval()(input_ids=IDS).logits
        base = base_model(tiny_model)(input_ids=IDS).logits
    assert torch.allclose(initial, base, atol=1e-5), (initial - base).abs().max()
    # ... although the adapter is not zero (LoRA's B starts at 0, PiSSA's does not)
    assert any(p.abs().sum() > 0 for n, p in ctx.model.named_parameters() if "lora_B" in n)


def test_pissa_convert_writes_a_plain_lora_for_the_original_base(trained, tiny_model):
    from peft import PeftModel

    ctx, out = trained("pissa", pissa_iter=2, pissa_convert=True)
    converted = out / "pissa_converted"
    config = json.loads((converted / "adapter_config.json").read_text())
    assert config["init_lora_weights"] is True and config["r"] == 8  # rank x 2: [A | A0], [B | -B0]
    assert (out / "pissa_init" / "adapter_model.safetensors").exists()
    with torch.no_grad():
        expected = ctx.model.eval()(input_ids=IDS).logits
        reloaded = PeftModel.from_pretrained(base_model(tiny_model), converted).eval()(input_ids=IDS).logits
    assert torch.allclose(expected, reloaded, atol=1e-4), (expected - reloaded).abs().max()


def test_loraplus_gives_lora_b_a_larger_learning_rate(trained):
    ctx, _ = trained("loraplus")
    groups = {g["name"]: g for g in optimizer_of(ctx).param_groups}
    assert groups["lora_B"]["initial_lr"] == pytest.approx(4 * groups["lora_A"]["initial_lr"])
    assert groups["lora_A"]["initial_lr"] == pytest.approx(5e-3)
    names = {id(p): n for n, p in ctx.model.named_parameters()}
    assert all("lora_A" in names[id(p)] for p in groups["lora_A"]["params"])
    assert all("lora_B" in names[id(p)] for p in groups["lora_B"]["params"] + groups.get("lora_B_no_decay", {"params": []})["params"])


def test_additional_target_is_trained_and_saved_with_the_adapter(tiny_model, data_dir):
    ctx = loaded(tiny_model, data_dir, finetuning_type="lora", lora_rank=4, lora_target="q_proj,v_proj",
                 additional_target="embed_tokens")
    names = set(trainable(ctx.model))
    assert any("embed_tokens.modules_to_save" in n for n in names)
    assert {n.split(".")[-4] for n in names if "lora_" in n} == {"q_proj", "v_proj"}
    assert ctx.model.peft_config["default"].modules_to_save == ["embed_tokens"]


def test_unknown_lora_target_lists_the_linear_layers(tiny_model, data_dir):
    with pytest.raises(TuneforgeError, match="no module named qkv_proj.*q_proj"):
        loaded(tiny_model, data_dir, finetuning_type="lora", lora_target="qkv_proj")


def test_adapters_continue_or_stack(trained, tiny_model, data_dir):
    """adapter_name_or_path: the last one continues training; earlier ones (or all, with create_new_adapter) are merged."""
    _, first = trained("lora")
    from safetensors.torch import load_file

    saved = load_file(first / "adapter_model.safetensors")
    ctx = loaded(tiny_model, data_dir, finetuning_type="lora", adapter_name_or_path=str(first))
    state = {n.replace(".default", ""): p for n, p in ctx.model.named_parameters() if p.requires_grad}
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)

    ctx = loaded(tiny_model, data_dir, finetuning_type="lora", lora_rank=2, adapter_name_or_path=str(first),
                 create_new_adapter=True)
    new = trainable(ctx.model)
    assert all(p.abs().sum() == 0 for n, p in new.items() if "lora_B" in n)  # a fresh adapter ...
    assert all(p.shape[0] == 2 for n, p in new.items() if "lora_A" in n)
    q = ctx.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert not torch.equal(q, base_model(tiny_model).model.layers[0].self_attn.q_proj.weight)  # ... on merged weights


# --- freeze and full ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings, layers, parts", [
    (dict(freeze_trainable_layers=1), {1}, None),
    (dict(freeze_trainable_layers=-1), {0}, None),
    (dict(freeze_trainable_layers=2, freeze_trainable_modules="mlp"), {0, 1}, {"mlp"}),
    (dict(freeze_trainable_layers=1, freeze_trainable_modules="q_proj,v_proj"), {1}, {"q_proj", "v_proj"}),
])
def test_freeze_trains_exactly_the_chosen_layers_and_modules(tiny_model, data_dir, settings, layers, parts):
    ctx = loaded(tiny_model, data_dir, finetuning_type="freeze", **settings)
    expected = set()
    for name, _ in ctx.model.named_parameters():
        if ".layers." not in name or int(name.split(".layers.")[1].split(".")[0]) not in layers:
            continue
        if parts is None or set(name.split(".")) & parts:
            expected.add(name)
    assert set(trainable(ctx.model)) == expected


def test_freeze_extra_modules_and_unknown_names(tiny_model, data_dir):
    ctx = loaded(tiny_model, data_dir, finetuning_type="freeze", freeze_trainable_layers=1,
                 freeze_extra_modules="embed_tokens,norm")
    names = set(trainable(ctx.model))
    assert {"model.embed_tokens.weight", "model.norm.weight"} <= names
    assert not any(".layers.0." in n for n in names)  # 'norm' does not reach input_layernorm of frozen layers
    with pytest.raises(TuneforgeError, match="'attn' is not a module of the decoder layers.*self_attn"):
        loaded(tiny_model, data_dir, finetuning_type="freeze", freeze_trainable_modules="attn")
    with pytest.raises(TuneforgeError, match="'embeddings' is not a module outside.*embed_tokens"):
        loaded(tiny_model, data_dir, finetuning_type="freeze", freeze_extra_modules="embeddings")


def test_full_trains_every_parameter(trained):
    ctx, out = trained("full")
    assert set(trainable(ctx.model)) == {n for n, _ in ctx.model.named_parameters()}
    assert (out / "model.safetensors").exists()


# --- optimizer methods: really their optimizers --------------------------------------------------------------------


def test_galore_trains_everything_with_the_galore_optimizer(trained):
    from galore_torch import GaLoreAdamW
    from galore_torch.galore_projector import GaLoreProjector

    ctx, _ = trained("galore")
    assert set(trainable(ctx.model)) == {n for n, _ in ctx.model.named_parameters()}
    optimizer = optimizer_of(ctx)
    assert isinstance(optimizer, GaLoreAdamW)
    projected = [g for g in optimizer.param_groups if "rank" in g]
    assert len(projected) == 1 and projected[0]["rank"] == 4 and len(projected[0]["params"]) == 14
    for param in projected[0]["params"]:
        projector = optimizer.state[param]["projector"]
        assert isinstance(projector, GaLoreProjector) and 4 in projector.ortho_matrix.shape
        assert optimizer.state[param]["exp_avg"].numel() < param.numel()  # Adam's moments live in the projection


def test_galore_layerwise_steps_each_parameter_with_its_own_optimizer(trained):
    from galore_torch import GaLoreAdamW

    from tuneforge.plugins.methods._optim import LayerwiseOptimizer

    ctx, out = trained("galore_layerwise")
    optimizer = optimizer_of(ctx)
    assert isinstance(optimizer, LayerwiseOptimizer)
    assert len(optimizer.inner) == sum(1 for p in ctx.model.parameters() if p.requires_grad)
    assert all(isinstance(opt, GaLoreAdamW) for opt in optimizer.inner.values())
    assert sum("projector" in s for opt in optimizer.inner.values() for s in opt.state.values()) == 14
    # the trainer's scheduler drives the inner optimizers' learning rates
    lrs = {g["lr"] for opt in optimizer.inner.values() for g in opt.param_groups}
    assert lrs == {ctx.extras["trainer"].lr_scheduler.get_last_lr()[0]}


def test_apollo_uses_the_apollo_optimizer(trained):
    from apollo_torch import APOLLOAdamW
    from apollo_torch.random_projector import GradientProjector

    ctx, _ = trained("apollo")
    assert ctx.plan.method.name == "apollo"  # selected by use_apollo: true
    optimizer = optimizer_of(ctx)
    assert isinstance(optimizer, APOLLOAdamW)
    states = [optimizer.state[p] for g in optimizer.param_groups if "rank" in g for p in g["params"]]
    assert len(states) == 14 and all(isinstance(s["projector"], GradientProjector) for s in states)


def test_badam_trains_one_block_at_a_time(trained, tiny_model):
    from badam import BlockOptimizer

    ctx, _ = trained("badam")
    optimizer = optimizer_of(ctx)
    assert isinstance(optimizer, BlockOptimizer) and optimizer.block_num == 2
    assert optimizer.global_step == 6
    # only the active block trains at any time ...
    active = f".layers.{optimizer.active_block}."
    assert set(trainable(ctx.model)) == {n for n, _ in ctx.model.named_parameters() if active in n}
    before = dict(base_model(tiny_model).named_parameters())
    changed = {n for n, p in ctx.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed == {n for n in before if ".layers." in n}  # ... and it switched: both layers, nothing outside


def test_badam_ratio_updates_a_sparse_part_of_the_weights(trained, tiny_model):
    from badam import BlockOptimizerRatio

    ctx, _ = trained("badam_ratio")
    assert isinstance(optimizer_of(ctx), BlockOptimizerRatio)
    before = dict(base_model(tiny_model).named_parameters())
    after = dict(ctx.model.named_parameters())
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    q = "model.layers.0.self_attn.q_proj.weight"
    fraction = (after[q] != before[q]).float().mean().item()
    assert 0.3 < fraction < 0.7  # badam_update_ratio: 0.5, the same half every step


def test_optimizer_flags_compose_with_freeze(tiny_model, data_dir):
    ctx = loaded(tiny_model, data_dir, use_galore=True, finetuning_type="freeze", freeze_trainable_layers=1)
    assert ctx.plan.method.name == "galore"
    assert set(trainable(ctx.model)) == {n for n, _ in ctx.model.named_parameters() if ".layers.1." in n}


# --- check rejects what cannot work, before loading anything ---------------------------------------------------------


@pytest.mark.parametrize("settings, message", [
    (dict(finetuning_type="lora", pissa_init=True, quantization_bit=4), "pissa_init cannot be used with quantization_bit"),
    (dict(finetuning_type="full", loraplus_lr_ratio=16), "LoRA+ (loraplus_lr_ratio) needs a LoRA method"),
    (dict(finetuning_type="freeze", use_dora=True), "use_dora needs a LoRA method"),
    (dict(use_galore=True, use_apollo=True, finetuning_type="full"), "cannot be combined with use_galore"),
    (dict(use_galore=True, use_badam=True), "cannot be combined with use_galore"),
    (dict(use_galore=True, finetuning_type="lora"), "cannot be used with finetuning_type: lora"),
    (dict(finetuning_type="galore", use_badam=True), "finetuning_type: galore and use_badam: true select two"),
    (dict(use_galore=True, galore_layerwise=True, gradient_accumulation_steps=4), "cannot accumulate gradients"),
    (dict(use_apollo=True, apollo_layerwise=True, gradient_accumulation_steps=2), "cannot accumulate gradients"),
    (dict(finetuning_type="galore", optim="sgd"), "GaLore supports optim"),
    (dict(finetuning_type="dora", use_dora=False), "finetuning_type: dora means use_dora: true"),
    (dict(finetuning_type="lora", pissa_convert=True), "pissa_convert converts a PiSSA adapter"),
    (dict(finetuning_type="badam", badam_mode="ratio", badam_update_ratio=1.5), "badam_update_ratio must be in (0, 1]"),
    (dict(use_badam=True, finetuning_type="freeze"), "cannot be combined with finetuning_type: freeze"),
    (dict(finetuning_type="apollo", deepspeed="ds.json"), "APOLLO cannot be used with DeepSpeed"),
])
def test_check_rejects_incompatible_combinations(tiny_model, data_dir, settings, message):
    with pytest.raises(ConfigError) as info:
        prepare(None, _overrides(tiny_model, data_dir, output_dir="x", **settings), manager=PluginManager(autoload=False))
    assert message in str(info.value)


def test_layerwise_galore_rejects_several_processes(tiny_model, data_dir, monkeypatch):
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    with pytest.raises(ConfigError, match="galore_layerwise does not support distributed training"):
        prepare(None, _overrides(tiny_model, data_dir, output_dir="x", use_galore=True, galore_layerwise=True),
                manager=PluginManager(autoload=False))


def test_badam_rejects_deepspeed_zero3(tiny_model, data_dir, tmp_path):
    ds = tmp_path / "ds_z3.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(ConfigError, match="BAdam with DeepSpeed ZeRO-3"):
        prepare(None, _overrides(tiny_model, data_dir, output_dir="x", use_badam=True, deepspeed=str(ds)),
                manager=PluginManager(autoload=False))


def test_tuneforge_check_prints_every_reason(tiny_model, data_dir, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(f"model_name_or_path: {tiny_model}\ndataset: sums\ndataset_dir: {data_dir}\ntemplate: llama3\n"
                      "use_galore: true\ngalore_rank: 0\ngalore_layerwise: true\ngradient_accumulation_steps: 2\n"
                      "loraplus_lr_ratio: 16\n")
    result = run_cli("check", str(config))
    assert result.returncode == 2, result.stderr
    assert "the config has 3 problems" in result.stderr
    assert "method galore: galore_rank must be positive" in result.stderr
    assert "galore_layerwise steps each layer during backward and cannot accumulate gradients" in result.stderr
    assert "LoRA+ (loraplus_lr_ratio) needs a LoRA method" in result.stderr


def test_missing_optimizer_library_is_unavailable_with_the_pip_command(monkeypatch, tiny_model, data_dir):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "galore_torch" else real(name, *a))
    manager = PluginManager(autoload=False)
    assert manager.entry("method", "galore").status == "unavailable: missing galore_torch (pip install 'tuneforge[optim]')"
    with pytest.raises(ConfigError, match=r"method 'galore' is unavailable: missing galore_torch \(pip install 'tuneforge\[optim\]'\)"):
        prepare(None, _overrides(tiny_model, data_dir, output_dir="x", use_galore=True), manager=manager)


@pytest.mark.parametrize("target, count", [("all", 14), ("mlp", 6), ("mlp,self_attn", 14), ("q_proj,v_proj", 4)])
def test_galore_targets_are_whole_module_names_as_in_llamafactory_configs(tiny_model, data_dir, target, count):
    needs("galore")
    from tuneforge.train.hf_trainer import training_arguments

    ctx = loaded(tiny_model, data_dir, finetuning_type="galore", galore_target=target, galore_rank=4)
    optimizer = ctx.plan.method.spec.create_optimizer(ctx, ctx.model, training_arguments(ctx))
    (projected,) = [g for g in optimizer.param_groups if "rank" in g]
    assert len(projected["params"]) == count


def test_unknown_galore_target_lists_the_linear_layers(tiny_model, data_dir):
    needs("galore")
    from tuneforge.train.hf_trainer import training_arguments

    ctx = loaded(tiny_model, data_dir, finetuning_type="galore", galore_target="attn")
    with pytest.raises(TuneforgeError, match=r"galore_target: no linear layer named attn; .*q_proj.*\(in mlp, self_attn\)"):
        ctx.plan.method.spec.create_optimizer(ctx, ctx.model, training_arguments(ctx))


#: The method sections of LLaMA-Factory's examples/extras/{galore,apollo,badam,pissa,loraplus} configs, verbatim.
LLAMAFACTORY_EXAMPLES = {
    "galore": "finetuning_type: full\nuse_galore: true\ngalore_layerwise: true\ngalore_target: mlp,self_attn\n"
              "galore_rank: 128\ngalore_scale: 2.0\ngradient_accumulation_steps: 1\nlearning_rate: 0.0001\n"
              "lr_scheduler_type: cosine\nwarmup_steps: 0.1\npure_bf16: true\n",
    "apollo": "finetuning_type: full\nuse_apollo: true\napollo_layerwise: true\napollo_target: all\napollo_rank: 128\n"
              "apollo_scale: 32.0\napollo_scale_type: channel\ngradient_accumulation_steps: 1\nlearning_rate: 1.0e-5\n"
              "lr_scheduler_type: cosine\nwarmup_ratio: 0.1\npure_bf16: true\nddp_timeout: 180000000\n",
    "badam": "finetuning_type: full\nuse_badam: true\nbadam_mode: layer\nbadam_switch_mode: ascending\n"
             "badam_switch_interval: 50\nbadam_verbose: 2\ngradient_accumulation_steps: 8\nlearning_rate: 1.0e-5\n"
             "lr_scheduler_type: cosine\nwarmup_ratio: 0.1\n",
    "pissa": "finetuning_type: lora\nlora_rank: 8\nlora_target: all\npissa_init: true\npissa_iter: 16\npissa_convert: true\n"
             "gradient_accumulation_steps: 8\nlearning_rate: 1.0e-4\nlr_scheduler_type: cosine\nwarmup_ratio: 0.1\nbf16: true\n",
    "loraplus": "finetuning_type: lora\nlora_rank: 8\nlora_target: all\nloraplus_lr_ratio: 16.0\n"
                "gradient_accumulation_steps: 8\nlearning_rate: 1.0e-4\nlr_scheduler_type: cosine\nwarmup_ratio: 0.1\nbf16: true\n",
}


@pytest.mark.parametrize("name", sorted(LLAMAFACTORY_EXAMPLES))
def test_llamafactory_method_examples_train(tiny_model, tmp_path, name):
    from .conftest import ANCHOR

    needs(name)
    config = tmp_path / f"{name}.yaml"
    config.write_text(f"model_name_or_path: {tiny_model}\nstage: sft\ndo_train: true\ndataset: identity\n"
                      f"dataset_dir: {ANCHOR}\ntemplate: llama3\ncutoff_len: 256\noutput_dir: {tmp_path / 'out'}\n"
                      "per_device_train_batch_size: 1\nlogging_steps: 1\n" + LLAMAFACTORY_EXAMPLES[name])
    prepared = prepare(config, ["max_steps=2", "max_samples=16", "disable_tqdm=true"], manager=PluginManager(autoload=False))
    assert not prepared.warnings, prepared.warnings
    ctx = run_training(prepared)
    assert ctx.plan.method.name == {"loraplus": "lora", "pissa": "lora"}.get(name, name)
    assert len(losses(tmp_path / "out")) == 2
    if name == "pissa":
        assert (tmp_path / "out" / "pissa_converted" / "adapter_model.safetensors").exists()
