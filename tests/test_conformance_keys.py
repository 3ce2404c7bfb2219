"""LLaMA-Factory keys that used to be unknown or ignored, each shown to act on the tiny model:
OFT (finetuning_type: oft), the SFT loss variants (DFT, EAFT, ASFT), fsdp given as a list, and
fsdp_transformer_layer_cls_to_wrap."""

from __future__ import annotations

import json

import pytest
import torch

from tuneforge.errors import ConfigError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager
from tuneforge.train.pipeline import run_training

ROWS = [
    {"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
    for a in range(6) for b in range(6)
]
IDS = torch.tensor([[5, 17, 42, 99, 7, 300, 12]])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    (path / "sums.json").write_text(json.dumps(ROWS))
    (path / "dataset_info.json").write_text(json.dumps({"sums": {"file_name": "sums.json"}}))
    return path


def overrides(tiny_model, data_dir, out, **settings) -> list[str]:
    base = dict(
        model_name_or_path=str(tiny_model), template="llama3", dataset_dir=str(data_dir), dataset="sums",
        cutoff_len=64, per_device_train_batch_size=4, max_steps=4, learning_rate=5e-3, logging_steps=1,
        report_to="none", disable_tqdm=True, overwrite_output_dir=True, save_steps=1000, output_dir=str(out),
        disable_shuffling=True, stage="sft", seed=0,
    )
    base.update(settings)
    return [f"{k}={v}" for k, v in base.items()]


def train(tiny_model, data_dir, out, **settings):
    prepared = prepare(None, overrides(tiny_model, data_dir, out, **settings), manager=PluginManager(autoload=False))
    return run_training(prepared)


def losses(out) -> list[float]:
    records = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


# --- OFT ---------------------------------------------------------------------------------------------------------


def test_oft_trains_only_its_rotations_and_the_adapter_reloads(tiny_model, data_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "oft"
    ctx = train(tiny_model, data_dir, out, finetuning_type="oft", oft_block_size=8, oft_rank=0, learning_rate=1e-2)
    trainable = [n for n, p in ctx.model.named_parameters() if p.requires_grad]
    assert trainable and all(".oft_" in n for n in trainable), trainable[:5]
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "OFT" and adapter["oft_block_size"] == 8
    assert {"q_proj", "v_proj", "down_proj"} <= set(adapter["target_modules"])  # oft_target: all
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        before = base(input_ids=IDS).logits
        expected = ctx.model.eval()(input_ids=IDS).logits
        reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out).eval()
        got = reloaded(input_ids=IDS).logits
    assert torch.allclose(expected, got, atol=1e-5)
    assert not torch.allclose(before, got, atol=1e-4), "training did not change the model"
    seen = losses(out)
    assert len(seen) == 4 and seen[-1] < seen[0]


@pytest.mark.parametrize("settings, message", [
    (dict(oft_block_size=0, oft_rank=0), "set exactly one of oft_rank and oft_block_size"),
    (dict(oft_block_size=8, oft_rank=4), "set exactly one of oft_rank and oft_block_size"),
    (dict(module_dropout=1.5), "module_dropout must be in [0, 1)"),
    (dict(use_dora=True), "use_dora needs a LoRA method"),
])
def test_oft_check_rejects_what_cannot_work(tiny_model, data_dir, tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        prepare(None, overrides(tiny_model, data_dir, tmp_path, finetuning_type="oft", **settings),
                manager=PluginManager(autoload=False))


def test_oft_block_size_that_does_not_divide_a_layer_says_which(tiny_model, data_dir, tmp_path):
    from tuneforge.errors import TuneforgeError

    with pytest.raises(TuneforgeError, match=r"oft_block_size 7 does not divide the input width \d+ of"):
        train(tiny_model, data_dir, tmp_path / "bad", finetuning_type="oft", oft_block_size=7, max_steps=1)


# --- SFT loss variants ----------------------------------------------------------------------------------------------


def _explicit(kind, logits, labels, alpha=1.0):
    """Token by token, straight from the definitions, to compare with the vectorised loss."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target == -100:
                continue
            logp = torch.log_softmax(logits[b, t].double(), -1)
            ce = -float(logp[target])
            if kind == "dft":
                weight = float(logp[target].exp())
            else:
                top = torch.topk(logits[b, t].double(), 20).values
                q = torch.log_softmax(top, -1)
                weight = (float(-(q.exp() * q).sum()) / 3.0) ** alpha
            total += ce * weight
            count += 1
    return total / count


@pytest.mark.parametrize("kind, alpha", [("dft", 1.0), ("eaft", 1.0), ("eaft", 0.5)])
def test_loss_variants_match_their_definitions(kind, alpha):
    from tuneforge.plugins.stages._sft_losses import weighted_loss

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 50, generator=gen) * 3
    labels = torch.randint(0, 50, (2, 6), generator=gen)
    labels[0, :2] = -100
    labels[1, 4] = -100
    valid = int((labels[:, 1:] != -100).sum())
    got = weighted_loss(kind, logits, labels, num_items_in_batch=torch.tensor(valid), alpha=alpha)
    assert float(got) == pytest.approx(_explicit(kind, logits, labels, alpha), rel=1e-5)
    # Without num_items_in_batch (evaluation) it is the mean over target tokens: the same number here.
    assert float(weighted_loss(kind, logits, labels, alpha=alpha)) == pytest.approx(float(got), rel=1e-5)


def test_dft_eaft_and_asft_change_the_training_loss_as_documented(tiny_model, data_dir, tmp_path):
    runs = {}
    for name, settings in {
        "plain": {},
        "dft": dict(use_dft_loss=True),
        "eaft": dict(use_eaft_loss=True, eaft_alpha=2.0),
        "asft": dict(use_asft_loss=True, asft_alpha=0.5, finetuning_type="full", learning_rate=1e-3),
        "dft_full": dict(use_dft_loss=True, finetuning_type="full", learning_rate=1e-3),
    }.items():
        train(tiny_model, data_dir, tmp_path / name, max_steps=3, **settings)
        runs[name] = losses(tmp_path / name)
    plain, dft, eaft = runs["plain"][0], runs["dft"][0], runs["eaft"][0]
    # Same first batch, same untrained model: DFT weights each token by p(target) < 1, far below 1 for
    # a random model, so its loss is a small fraction of the plain one; EAFT weights by (entropy/3)^2.
    assert dft < 0.5 * plain
    assert eaft != pytest.approx(plain, rel=1e-3) and eaft != pytest.approx(dft, rel=1e-3)
    # ASFT at step 1: the model is its own reference, the KL anchor is 0 and the loss is DFT's.
    assert runs["asft"][0] == pytest.approx(runs["dft_full"][0], rel=1e-4)
    assert runs["asft"][1:] != pytest.approx(runs["dft_full"][1:], rel=1e-6)


def test_one_sft_loss_at_a_time(tiny_model, data_dir, tmp_path):
    with pytest.raises(ConfigError, match="use_dft_loss and use_eaft_loss are different SFT losses"):
        prepare(None, overrides(tiny_model, data_dir, tmp_path, use_dft_loss=True, use_eaft_loss=True),
                manager=PluginManager(autoload=False))


# --- FSDP keys as LLaMA-Factory writes them --------------------------------------------------------------------------


def test_fsdp_list_and_layer_class_reach_the_training_arguments(tiny_model, data_dir, tmp_path):
    from transformers import Seq2SeqTrainingArguments

    from tuneforge.train.hf_trainer import _fsdp_layer_classes

    prepared = prepare(None, overrides(tiny_model, data_dir, tmp_path, fsdp="[full_shard, auto_wrap]",
                                       fsdp_transformer_layer_cls_to_wrap="LlamaDecoderLayer"),
                       manager=PluginManager(autoload=False))
    assert prepared.config.fsdp == ["full_shard", "auto_wrap"]
    kwargs = {"fsdp": prepared.config.fsdp, "output_dir": str(tmp_path), "use_cpu": True}
    _fsdp_layer_classes(prepared.config.fsdp_transformer_layer_cls_to_wrap, kwargs)
    args = Seq2SeqTrainingArguments(**kwargs)
    assert args.fsdp_config["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]


# --- rope_scaling and flash_attn -------------------------------------------------------------------------------------


def loaded(tiny_model, data_dir, tmp_path, training=True, **settings):
    from tuneforge.train.context import RunContext
    from tuneforge.train.model import load_model

    prepared = prepare(None, overrides(tiny_model, data_dir, tmp_path, **settings), manager=PluginManager(autoload=False))
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=training)
    load_model(ctx)
    return ctx.model


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn", "llama3"])
def test_rope_scaling_stretches_the_positions(tiny_model, data_dir, tmp_path, kind):
    from transformers import AutoModelForCausalLM

    model = loaded(tiny_model, data_dir, tmp_path, finetuning_type="full", rope_scaling=kind, cutoff_len=5000)
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    old = base.config.max_position_embeddings
    params = model.config.rope_parameters
    # cutoff_len 5000 over 2048 positions: factor ceil(5000 / 2048) = 3, as LLaMA-Factory computes it.
    assert params["rope_type"] == kind and params["factor"] == 3.0
    assert model.config.max_position_embeddings == (old if kind == "dynamic" else 3 * old)
    if kind != "linear":
        assert params["original_max_position_embeddings"] == old
    # Dynamic NTK scaling only changes positions past the original length; the others change every position.
    length = old + 64 if kind == "dynamic" else 48
    ids = torch.arange(length).unsqueeze(0) % 200 + 5
    with torch.no_grad():
        scaled = model.eval()(input_ids=ids).logits[0, -1]
        plain = base(input_ids=ids).logits[0, -1]
    assert not torch.allclose(scaled, plain, atol=1e-4), f"{kind}: the logits did not change"


def test_rope_scaling_factor_is_two_for_short_inputs_and_unset_leaves_the_model(tiny_model, data_dir, tmp_path):
    model = loaded(tiny_model, data_dir, tmp_path, finetuning_type="full", rope_scaling="linear", cutoff_len=64)
    assert model.config.rope_parameters["factor"] == 2.0
    model = loaded(tiny_model, data_dir, tmp_path, finetuning_type="full")
    assert model.config.rope_parameters.get("rope_type", "default") == "default"


def test_flash_attn_without_flash_attention_falls_back_to_sdpa(tiny_model, data_dir, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available():
        pytest.skip("FlashAttention is usable here")
    model = loaded(tiny_model, data_dir, tmp_path, flash_attn="fa2")
    assert model.config._attn_implementation == "sdpa"
    assert "flash_attn: fa2 needs FlashAttention on a CUDA GPU" in capsys.readouterr().out


# --- evaluation keys -------------------------------------------------------------------------------------------------


def test_token_accuracy_is_the_row_mean_of_exact_next_token_predictions():
    import numpy as np
    from transformers import EvalPrediction

    from tuneforge.plugins.stages.supervised import token_accuracy

    # Row 0: targets at positions 2,3 (predicted by positions 1,2): one of two right -> 0.5.
    # Row 1: three targets, all right -> 1.0. Mean of rows: 0.75 (not 4/5 over tokens).
    preds = np.array([[0, 7, 9, 0], [4, 5, 6, 0]])
    labels = np.array([[-100, -100, 7, 8], [-100, 4, 5, 6]])
    assert token_accuracy(EvalPrediction(predictions=preds, label_ids=labels)) == {"accuracy": 0.75}


def test_compute_accuracy_reports_eval_accuracy_of_the_model(tiny_model, data_dir, tmp_path):
    ctx = train(tiny_model, data_dir, tmp_path / "acc", compute_accuracy=True, val_size=8, eval_strategy="steps",
                eval_steps=2, max_steps=4, learning_rate=1e-2, finetuning_type="full")
    trainer = ctx.extras["trainer"]
    metrics = trainer.evaluate()
    # The same number, counted by hand from the model's greedy next-token predictions.
    model = ctx.model.eval()
    scores = []
    for batch in trainer.get_eval_dataloader():
        with torch.no_grad():
            pred = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
        for p, label in zip(pred, batch["labels"]):
            mask = label[1:] != -100
            scores.append(float((p[:-1][mask] == label[1:][mask]).float().mean()))
    assert metrics["eval_accuracy"] == pytest.approx(sum(scores) / len(scores), abs=1e-6)
    logged = [json.loads(line) for line in (tmp_path / "acc" / "trainer_log.jsonl").read_text().splitlines()]
    assert any("eval_accuracy" in r for r in logged) or "eval_accuracy" in json.dumps(
        json.loads((tmp_path / "acc" / "all_results.json").read_text()))


def test_early_stopping_steps_stops_when_eval_loss_stops_improving(tiny_model, data_dir, tmp_path):
    # learning_rate 0: the eval loss never improves on the first evaluation, so with a patience of 2
    # training stops at the third evaluation (step 3) instead of running 20 steps.
    ctx = train(tiny_model, data_dir, tmp_path / "stop", early_stopping_steps=2, val_size=8, eval_strategy="steps",
                eval_steps=1, max_steps=20, learning_rate=0.0)
    assert ctx.extras["trainer"].state.global_step == 3
    ctx = train(tiny_model, data_dir, tmp_path / "go", val_size=8, eval_strategy="steps", eval_steps=1, max_steps=5,
                learning_rate=0.0)
    assert ctx.extras["trainer"].state.global_step == 5


def test_early_stopping_needs_evaluation_during_training(tiny_model, data_dir, tmp_path):
    with pytest.raises(ConfigError, match="early_stopping_steps stops when evaluations stop improving"):
        prepare(None, overrides(tiny_model, data_dir, tmp_path, early_stopping_steps=3, val_size=8),
                manager=PluginManager(autoload=False))


def test_interleave_once_uses_every_row_of_every_dataset_exactly_once(tiny_model, data_dir, tmp_path):
    from datasets import Dataset

    from tuneforge.data.dataset import _mix

    a = Dataset.from_dict({"x": [f"a{i}" for i in range(3)]})
    b = Dataset.from_dict({"x": [f"b{i}" for i in range(7)]})
    rows = {}
    for strategy in ("interleave_once", "interleave_under", "interleave_over"):
        config = prepare(None, overrides(tiny_model, data_dir, tmp_path, mix_strategy=strategy),
                         manager=PluginManager(autoload=False)).config
        rows[strategy] = list(_mix([a, b], config)["x"])
    assert sorted(rows["interleave_once"]) == sorted(list(a["x"]) + list(b["x"]))  # each row once, none repeated
    assert len(rows["interleave_under"]) < 10 < len(rows["interleave_over"])


# --- new tokens ------------------------------------------------------------------------------------------------------


def test_new_special_tokens_are_trained_saved_and_reload(tiny_model, data_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.train.context import RunContext
    from tuneforge.train.model import load_model

    # Rows that use the new tokens, so their embeddings get gradients.
    rows = [{"instruction": f"Draw shape {i}", "input": "", "output": f"<|svg|> <|rect|> {i} <|end_svg|>"}
            for i in range(24)]
    (data_dir / "svg.json").write_text(json.dumps(rows))
    info = json.loads((data_dir / "dataset_info.json").read_text())
    info["svg"] = {"file_name": "svg.json"}
    (data_dir / "dataset_info.json").write_text(json.dumps(info))
    out = tmp_path / "vocab"
    tokens = "<|svg|>,<|rect|>,<|end_svg|>"
    ctx = train(tiny_model, data_dir, out, dataset="svg", add_special_tokens=tokens, lora_rank=4, max_steps=6)
    base_rows = AutoModelForCausalLM.from_pretrained(tiny_model).get_input_embeddings().weight.shape[0]

    saved_tokenizer = AutoTokenizer.from_pretrained(out)
    ids = saved_tokenizer.convert_tokens_to_ids(tokens.split(","))
    assert ids == [base_rows, base_rows + 1, base_rows + 2]  # the saved tokenizer knows them
    assert saved_tokenizer.decode(ids, skip_special_tokens=True) == ""  # special: dropped from replies
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter["modules_to_save"]) == {"embed_tokens", "lm_head"}

    model = ctx.model
    trained_rows = model.get_input_embeddings().weight[ids].detach().clone()
    assert model.get_input_embeddings().weight.shape[0] % 64 == 0
    # The new rows trained: they moved away from where they started (the mean of the old rows plus noise).
    start = AutoModelForCausalLM.from_pretrained(tiny_model).get_input_embeddings().weight.mean(0)
    assert (trained_rows - start).abs().max() > 0
    first = train(tiny_model, data_dir, tmp_path / "zero", dataset="svg", add_special_tokens=tokens, lora_rank=4,
                  max_steps=1, learning_rate=0.0)
    untrained_rows = first.model.get_input_embeddings().weight[ids].detach()
    assert not torch.allclose(trained_rows, untrained_rows, atol=1e-4)

    # Chat/export path: the same config keys and the adapter give the trained model back, new rows included.
    prepared = prepare(None, overrides(tiny_model, data_dir, tmp_path / "unused", add_special_tokens=tokens,
                                       adapter_name_or_path=str(out)), manager=PluginManager(autoload=False))
    reload = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
    load_model(reload)
    probe = torch.tensor([[5, ids[0], 17, ids[1], 9, ids[2]]])
    with torch.no_grad():
        expected = model.eval()(input_ids=probe).logits
        got = reload.model(input_ids=probe).logits
    assert torch.allclose(expected, got, atol=1e-5)
    assert reload.tokenizer.convert_tokens_to_ids("<|rect|>") == ids[1]


def test_new_special_tokens_config_and_desc_init(tiny_model, data_dir, tmp_path):
    from tuneforge.train.context import RunContext
    from tuneforge.train.model import load_model

    cfg = tmp_path / "tokens.yaml"
    cfg.write_text('"<|a|>": "plus sign"\n"<|b|>": "is"\n')
    prepared = prepare(None, overrides(tiny_model, data_dir, tmp_path, new_special_tokens_config=str(cfg),
                                       add_special_tokens="<|ignored|>", init_special_tokens="desc_init",
                                       finetuning_type="full"), manager=PluginManager(autoload=False))
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=True)
    load_model(ctx)
    tok, weight = ctx.tokenizer, ctx.model.get_input_embeddings().weight
    assert "<|ignored|>" not in tok.get_vocab()  # the YAML file wins over add_special_tokens
    for token, text in (("<|a|>", "plus sign"), ("<|b|>", "is")):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert torch.allclose(weight[tok.convert_tokens_to_ids(token)], weight[ids].mean(0), atol=1e-6)


def test_eval_on_each_dataset_reports_each_loss_as_if_evaluated_alone(tiny_model, data_dir, tmp_path):
    other = [{"instruction": f"Say {w}", "input": "", "output": w} for w in ("yes", "no", "maybe", "later", "never")]
    (data_dir / "words.json").write_text(json.dumps(other))
    info = json.loads((data_dir / "dataset_info.json").read_text())
    info["words"] = {"file_name": "words.json"}
    (data_dir / "dataset_info.json").write_text(json.dumps(info))
    common = dict(max_steps=2, learning_rate=0.0, do_eval=True)  # lr 0: every run evaluates the same model
    each = train(tiny_model, data_dir, tmp_path / "each", eval_dataset="sums,words", eval_on_each_dataset=True,
                 **common).metrics
    whole = train(tiny_model, data_dir, tmp_path / "whole", eval_dataset="sums,words", **common).metrics
    alone = {name: train(tiny_model, data_dir, tmp_path / name, eval_dataset=name, **common).metrics["eval_loss"]
             for name in ("sums", "words")}
    assert each["eval_sums_loss"] == pytest.approx(alone["sums"], rel=1e-5)
    assert each["eval_words_loss"] == pytest.approx(alone["words"], rel=1e-5)
    assert "eval_loss" in whole and "eval_sums_loss" not in whole
    assert min(alone.values()) < whole["eval_loss"] < max(alone.values())


# --- optimizers: Muon and Adam-mini ----------------------------------------------------------------------------------


def test_use_muon_updates_matrices_with_muon_and_the_rest_with_adamw(tiny_model, data_dir, tmp_path):
    ctx = train(tiny_model, data_dir, tmp_path / "muon", use_muon=True, finetuning_type="full", learning_rate=1e-3)
    assert ctx.plan.method.name == "muon"
    optimizer = ctx.extras["trainer"].optimizer
    optimizer = getattr(optimizer, "optimizer", optimizer)
    muon, adamw = optimizer.inner["muon"], optimizer.inner["adamw"]
    assert type(muon).__name__ == "Muon" and type(adamw).__name__ == "AdamW"
    model = ctx.model
    embed = model.get_input_embeddings().weight
    muon_params = [p for g in muon.param_groups for p in g["params"]]
    assert all(p.ndim == 2 for p in muon_params) and all(p is not embed for p in muon_params)
    assert any(p is embed for g in adamw.param_groups for p in g["params"])
    assert muon.state and all("momentum_buffer" in s for s in muon.state.values())  # Muon really stepped
    seen = losses(tmp_path / "muon")
    assert seen[-1] < seen[0]


def test_use_adam_mini_trains_with_adam_mini(tiny_model, data_dir, tmp_path):
    pytest.importorskip("adam_mini", reason="needs adam-mini: pip install 'tuneforge[optim]'")
    ctx = train(tiny_model, data_dir, tmp_path / "mini", use_adam_mini=True, finetuning_type="full", learning_rate=1e-3)
    optimizer = ctx.extras["trainer"].optimizer
    optimizer = getattr(optimizer, "optimizer", optimizer)
    assert type(optimizer).__name__ == "Adam_mini"
    # Fewer second-moment values than parameters: the point of Adam-mini.
    v_values = sum(s[k].numel() for s in optimizer.state.values() for k in ("v", "vmean") if k in s)
    params = sum(p.numel() for p in ctx.model.parameters() if p.requires_grad)
    assert 0 < v_values < params
    seen = losses(tmp_path / "mini")
    assert seen[-1] < seen[0]


def test_optimizer_flags_refuse_lora(tiny_model, data_dir, tmp_path):
    with pytest.raises(ConfigError, match="muon is an optimizer for full or freeze tuning.*drop use_muon"):
        prepare(None, overrides(tiny_model, data_dir, tmp_path, use_muon=True, finetuning_type="lora"),
                manager=PluginManager(autoload=False))


def test_upcast_layernorm_and_lmhead_output_in_a_bf16_run(tiny_model, data_dir, tmp_path):
    plain = loaded(tiny_model, data_dir, tmp_path, bf16=True, lora_rank=4)
    norms = [p for n, p in plain.named_parameters() if p.ndim == 1 and "norm" in n]
    assert norms and all(p.dtype == torch.bfloat16 for p in norms)
    assert plain(input_ids=IDS).logits.dtype == torch.bfloat16
    model = loaded(tiny_model, data_dir, tmp_path, bf16=True, lora_rank=4, upcast_layernorm=True,
                   upcast_lmhead_output=True)
    norms = [p for n, p in model.named_parameters() if p.ndim == 1 and "norm" in n]
    assert norms and all(p.dtype == torch.float32 for p in norms)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the trainer runs a bf16 model
        assert model(input_ids=IDS).logits.dtype == torch.float32
        assert plain(input_ids=IDS).logits.dtype == torch.bfloat16
    ctx = train(tiny_model, data_dir, tmp_path / "upcast", bf16=True, lora_rank=4, upcast_layernorm=True,
                upcast_lmhead_output=True, max_steps=2)
    assert len(losses(tmp_path / "upcast")) == 2 and ctx.model.get_output_embeddings() is not None


def test_eval_num_beams_sets_the_beam_width_of_predictions(tiny_model, data_dir, tmp_path):
    from tuneforge.evaluation.predict import run_predict
    from tuneforge.train.context import RunContext

    def predictions(name, **settings):
        values = dict(model_name_or_path=str(tiny_model), template="llama3", eval_dataset="sums",
                      dataset_dir=str(data_dir), output_dir=str(tmp_path / name), do_sample=False, max_new_tokens=8,
                      per_device_eval_batch_size=4, max_samples=4, **settings)
        prepared = prepare(None, [f"{k}={v}" for k, v in values.items()], manager=PluginManager(autoload=False),
                           inference=True)
        run_predict(RunContext(prepared.config, prepared.plan, prepared.manager, training=False))
        lines = (tmp_path / name / "generated_predictions.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line)["predict"] for line in lines]

    greedy = predictions("greedy")
    beams = predictions("beams", num_beams=4)
    assert beams != greedy  # beam search finds other replies on this model
    assert predictions("eval_beams", eval_num_beams=4) == beams


def test_a_hub_dataset_offline_is_a_clear_error_not_a_traceback(tiny_model, tmp_path, monkeypatch):
    from tuneforge.data.loading import read_rows
    from tuneforge.data.registry import resolve_datasets
    from tuneforge.errors import TuneforgeError

    (tmp_path / "dataset_info.json").write_text(json.dumps({"zh": {"hf_hub_url": "llamafactory/alpaca_zh"}}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    attrs, problems = resolve_datasets(["zh"], str(tmp_path), "dataset")
    assert not problems
    with pytest.raises(TuneforgeError, match=r"dataset 'zh' is on the Hugging Face hub \(llamafactory/alpaca_zh\)"):
        read_rows(attrs[0])


def test_use_llama_pro_trains_the_expanded_blocks(tiny_model, data_dir, tmp_path):
    import re

    from tuneforge.errors import TuneforgeError

    from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

    small = cached_tiny_model("llama3", "small")  # 8 layers: LLaMA Pro's blocks differ from "the last n"
    model = loaded(small, data_dir, tmp_path, finetuning_type="freeze", use_llama_pro=True,
                   freeze_trainable_layers=2)
    layers = model.config.num_hidden_layers
    trained = {int(m.group(1)) for n, p in model.named_parameters() if p.requires_grad
               for m in [re.search(r"\.layers\.(\d+)\.", n)] if m}
    stride = layers // 2
    assert trained == {stride - 1, 2 * stride - 1}  # the last block of each half, as LLaMA Pro expands
    plain = loaded(small, data_dir, tmp_path, finetuning_type="freeze", freeze_trainable_layers=2)
    plain_trained = {int(m.group(1)) for n, p in plain.named_parameters() if p.requires_grad
                     for m in [re.search(r"\.layers\.(\d+)\.", n)] if m}
    assert plain_trained == {layers - 2, layers - 1} != trained
    with pytest.raises(TuneforgeError, match="freeze_trainable_layers=3 .* must divide"):
        loaded(small, data_dir, tmp_path, finetuning_type="freeze", use_llama_pro=True, freeze_trainable_layers=3)
    # use_llama_pro is freeze tuning's key: with another method it is named as doing nothing in that run
    warnings = prepare(None, overrides(tiny_model, data_dir, tmp_path, finetuning_type="lora", use_llama_pro=True),
                       manager=PluginManager(autoload=False)).warnings
    assert any(w.startswith("use_llama_pro (") and "method 'freeze'" in w and "which this run does not use" in w
               for w in warnings), warnings


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_csv_and_tsv_cells_are_text(tmp_path, suffix, sep):
    from tuneforge.data.loading import read_rows
    from tuneforge.data.registry import resolve_datasets

    lines = [["instruction", "input", "output"], ["What is 60 plus 3?", "", "63"], ["Say 1.50", "", "1.50"],
             ["Quote", "", 'a "b", c']]
    import csv

    with open(tmp_path / f"sums{suffix}", "w", encoding="utf-8", newline="") as f:
        csv.writer(f, delimiter=sep).writerows(lines)
    (tmp_path / "dataset_info.json").write_text(json.dumps({"sums": {"file_name": f"sums{suffix}"}}))
    attrs, problems = resolve_datasets(["sums"], str(tmp_path), "dataset")
    assert not problems
    rows = read_rows(attrs[0]).rows
    assert [r["output"] for r in rows] == ["63", "1.50", 'a "b", c']
    assert rows[0]["input"] == ""


def test_a_missing_local_adapter_is_a_clear_error(tiny_model, data_dir, tmp_path):
    from tuneforge.errors import TuneforgeError

    with pytest.raises(TuneforgeError, match="adapter_name_or_path: saves/llama3-8b/lora/sft does not exist"):
        loaded(tiny_model, data_dir, tmp_path, training=False, adapter_name_or_path="saves/llama3-8b/lora/sft")


def test_moe_aux_loss_coef_weights_the_router_loss(tiny_model, data_dir, tmp_path):
    import shutil

    from transformers import AutoTokenizer, MixtralConfig, MixtralForCausalLM

    moe = tmp_path / "tiny-moe"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    MixtralForCausalLM(MixtralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                     num_local_experts=4, num_experts_per_tok=2)).save_pretrained(moe)
    tokenizer.save_pretrained(moe)
    for extra in ("generation_config.json",):
        if (tiny_model / extra).is_file():
            shutil.copy(tiny_model / extra, moe / extra)

    def loss_parts(coef):
        model = loaded(moe, data_dir, tmp_path, finetuning_type="full", moe_aux_loss_coef=coef).train()
        assert model.config.router_aux_loss_coef == coef and model.config.output_router_logits
        with torch.no_grad():
            out = model(input_ids=IDS, labels=IDS)
        return out.loss.item(), out.aux_loss.item()

    low, aux = loss_parts(0.0)
    high, aux_again = loss_parts(0.5)
    assert aux > 0 and aux == pytest.approx(aux_again)
    assert high - low == pytest.approx(0.5 * aux, rel=1e-4)


# --- preference pairs longer than cutoff_len ---------------------------------------------------------------------------


def _lf_rule(source_len, target_len, cutoff_len):
    """LLaMA-Factory's infer_seqlen, written out again from its definition for the comparison."""
    if target_len * 2 < cutoff_len:
        max_target = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target = cutoff_len - source_len
    else:
        max_target = int(cutoff_len * (target_len / (source_len + target_len)))
    target = min(max_target, target_len)
    return min(max(cutoff_len - target, 0), source_len), target


def test_dpo_pairs_are_cut_as_llamafactory_cuts_them_pair_by_pair(tiny_model):
    from transformers import AutoTokenizer

    from tuneforge.data.template import IGNORE_INDEX, Template
    from tuneforge.data.tokenize import NO_CUTOFF, Settings, encode_conversation, pairwise_batch

    from .conftest import ANCHOR

    if not (ANCHOR / "dpo_en_demo.json").is_file():
        pytest.skip("needs ../shared/data-anchor")
    manager = PluginManager(autoload=False)
    template = Template.from_definition("llama3", manager.template("llama3").definition)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = json.loads((ANCHOR / "dpo_en_demo.json").read_text(encoding="utf-8"))
    settings = Settings(cutoff_len=512)
    examples = []
    for row in rows:
        system = "".join(m["value"] for m in row["conversations"] if m["from"] == "system") or None
        messages = [{"role": "user" if m["from"] == "human" else "assistant", "content": m["value"]}
                    for m in row["conversations"] if m["from"] != "system"]
        examples.append({"messages": messages, "system": system, "chosen": row["chosen"]["value"],
                         "rejected": row["rejected"]["value"]})
    out = pairwise_batch({"_example": [json.dumps(e) for e in examples]}, template=template, tokenizer=tokenizer,
                         settings=settings)
    assert len(out["chosen_input_ids"]) == len(examples)
    cut = 0
    for i, example in enumerate(examples):
        full = {}
        for side in ("chosen", "rejected"):
            convo = {**example, "messages": example["messages"] + [{"role": "assistant", "content": example[side]}]}
            ids, labels = encode_conversation(template, tokenizer, convo, settings, cutoff_len=NO_CUTOFF,
                                              mask_history=True)
            start = next(j for j, label in enumerate(labels) if label != IGNORE_INDEX)
            full[side] = (start, len(ids) - start)
        prompt_len = full["chosen"][0]
        source, target = _lf_rule(prompt_len, max(full["chosen"][1], full["rejected"][1]), 512)
        for side in ("chosen", "rejected"):
            labels = out[f"{side}_labels"][i]
            got_prompt = next(j for j, label in enumerate(labels) if label != IGNORE_INDEX)
            assert got_prompt == source, f"row {i} {side}: prompt {got_prompt} tokens, rule says {source}"
            assert len(labels) - got_prompt == min(target, full[side][1]), f"row {i} {side}"
            assert len(labels) <= 512
        # Both sides keep the very same prompt tokens.
        assert out["chosen_input_ids"][i][:source] == out["rejected_input_ids"][i][:source]
        cut += source < prompt_len or target < max(full["chosen"][1], full["rejected"][1])
    assert cut >= 10  # the file has long pairs at this cutoff: the rule was exercised
