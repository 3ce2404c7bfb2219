"""build_datasets end to end on the tiny llama3 tokenizer: cache, tokenized_path, val_size, mixing,
streaming, file types, pre-training chunks, label masks, workers, preference featurizers."""

from __future__ import annotations

import json
import time

import pytest

from tuneforge.data.dataset import build_datasets
from tuneforge.data.template import IGNORE_INDEX
from tuneforge.errors import ConfigError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager
from tuneforge.train.context import RunContext

from .conftest import ANCHOR, data_context


pytestmark = pytest.mark.usefixtures("private_cache")


def make_ctx(tiny_model, dataset_dir, **overrides) -> RunContext:
    """A run context with the tokenizer and template loaded (no model), as `tuneforge data` builds it."""
    base = dict(model_name_or_path=str(tiny_model), template="llama3", dataset_dir=str(dataset_dir), cutoff_len=128)
    return data_context(**{**base, **overrides})


def rows(n, tag="", start=0):
    return [{"instruction": f"{tag}What is {i} plus {i % 7}?", "input": "", "output": f"{tag}It is {i + i % 7}."}
            for i in range(start, start + n)]


def write(dataset_dir, entries: dict, **files):
    for name, data in files.items():
        (dataset_dir / name.replace("__", ".")).write_text(json.dumps(data) if not isinstance(data, str) else data)
    (dataset_dir / "dataset_info.json").write_text(json.dumps(entries))


def decode_all(ctx, dataset):
    return [ctx.tokenizer.decode(row["input_ids"]) for row in dataset]


# --- cache ------------------------------------------------------------------------------------


def test_second_run_is_served_from_the_cache_at_least_5x_faster(tiny_model, tmp_path, capsys, private_cache):
    (tmp_path / "big.json").write_text(json.dumps(rows(20_000)))
    ctx = make_ctx(tiny_model, tmp_path, dataset="big.json", cutoff_len=64)
    start = time.perf_counter()
    first = build_datasets(ctx, "supervised")
    cold = time.perf_counter() - start
    out = capsys.readouterr().out
    assert f"saved tokenised dataset to cache {private_cache / 'datasets'}" in out

    ctx = make_ctx(tiny_model, tmp_path, dataset="big.json", cutoff_len=64)  # a new run of the same config
    start = time.perf_counter()
    second = build_datasets(ctx, "supervised")
    warm = time.perf_counter() - start
    out = capsys.readouterr().out
    assert f"loaded tokenised dataset from cache {private_cache / 'datasets'}" in out
    assert len(first.train) == len(second.train) == 20_000
    assert first.train[123] == second.train[123] and first.train[-1] == second.train[-1]
    assert warm * 5 <= cold, f"cold {cold:.2f}s, from cache {warm:.2f}s"
    print(f"cache speed-up: {cold / warm:.0f}x ({cold:.2f}s -> {warm:.3f}s)")


def test_cache_key_follows_data_settings_and_template_and_overwrite_cache_rebuilds(tiny_model, tmp_path, capsys):
    write(tmp_path, {"d": {"file_name": "d.json"}}, d__json=rows(20))

    def run(**overrides):
        build_datasets(make_ctx(tiny_model, tmp_path, dataset="d", **overrides), "supervised")
        out = capsys.readouterr().out
        return "loaded tokenised dataset from cache" in out

    assert not run() and run()
    assert not run(cutoff_len=16) and run(cutoff_len=16)
    assert not run(train_on_prompt=True)
    assert not run(template="chatml")
    assert not run(overwrite_cache=True) and run()
    (tmp_path / "d.json").write_text(json.dumps(rows(20, tag="x")))
    assert not run()


def test_tokenized_path_saves_after_preprocessing_and_is_loaded_next_time(tiny_model, tmp_path, capsys):
    write(tmp_path, {"d": {"file_name": "d.json"}}, d__json=rows(40))
    saved = tmp_path / "tokenized"
    first = build_datasets(make_ctx(tiny_model, tmp_path, dataset="d", val_size=0.25, tokenized_path=saved), "supervised")
    assert f"saved tokenised dataset to {saved}" in capsys.readouterr().out
    from datasets import load_from_disk

    assert set(load_from_disk(str(saved))) == {"train", "validation"}  # LLaMA-Factory's layout
    # the data settings are not re-applied: the saved rows are used as they are
    second = build_datasets(make_ctx(tiny_model, tmp_path, dataset="d", cutoff_len=8, tokenized_path=saved), "supervised")
    assert f"loaded tokenised dataset from {saved}" in capsys.readouterr().out
    assert (len(second.train), len(second.eval)) == (30, 10)
    assert second.train[0] == first.train[0]


# --- splits and mixing ------------------------------------------------------------------------


@pytest.mark.parametrize("val_size, sizes", [(0.2, (32, 8)), (5, (35, 5)), ("0.1", (36, 4))])
def test_val_size_is_a_fraction_or_a_count(tiny_model, tmp_path, val_size, sizes):
    write(tmp_path, {"d": {"file_name": "d.json"}}, d__json=rows(40))
    splits = build_datasets(make_ctx(tiny_model, tmp_path, dataset="d", val_size=val_size), "supervised")
    assert (len(splits.train), len(splits.eval)) == sizes
    assert not set(map(tuple, splits.train["input_ids"])) & set(map(tuple, splits.eval["input_ids"]))


def test_mix_strategies(tiny_model, tmp_path):
    write(tmp_path, {"a": {"file_name": "a.json"}, "b": {"file_name": "b.json"}}, a__json=rows(10, "A"), b__json=rows(30, "B"))

    def mixed(**overrides):
        ctx = make_ctx(tiny_model, tmp_path, dataset="a,b", **overrides)
        return ["A" if "AWhat" in text else "B" for text in decode_all(ctx, build_datasets(ctx, "supervised").train)]

    concat = mixed()
    assert concat == ["A"] * 10 + ["B"] * 30
    under = mixed(mix_strategy="interleave_under")  # round robin, stops when a is exhausted
    assert under == ["A", "B"] * 10
    over = mixed(mix_strategy="interleave_over")  # round robin until b is exhausted too (a repeats)
    assert over == ["A", "B"] * 30
    weighted = mixed(mix_strategy="interleave_over", interleave_probs="0.2,0.8")
    assert weighted.count("B") >= 30 and weighted.count("A") < weighted.count("B")
    with pytest.raises(ConfigError, match="interleave_probs: has 3 value"):
        mixed(mix_strategy="interleave_under", interleave_probs="0.2,0.3,0.5")


def test_eval_dataset_and_max_samples_and_num_samples(tiny_model, tmp_path):
    write(tmp_path, {"a": {"file_name": "a.json"}, "b": {"file_name": "b.json", "num_samples": 25}},
          a__json=rows(10, "A"), b__json=rows(10, "B"))
    splits = build_datasets(make_ctx(tiny_model, tmp_path, dataset="b", eval_dataset="a", val_size=0.5), "supervised")
    assert (len(splits.train), len(splits.eval)) == (25, 10)  # num_samples upsamples; eval_dataset wins over val_size
    splits = build_datasets(make_ctx(tiny_model, tmp_path, dataset="a,b", max_samples=3), "supervised")
    assert len(splits.train) == 6


# --- streaming --------------------------------------------------------------------------------


def test_streaming_needs_max_steps(tiny_model, tmp_path):
    write(tmp_path, {"d": {"file_name": "d.jsonl"}}, d__jsonl="\n".join(json.dumps(r) for r in rows(20)))
    with pytest.raises(ConfigError, match="streaming: needs max_steps"):
        build_datasets(make_ctx(tiny_model, tmp_path, dataset="d", streaming=True), "supervised")
    with pytest.raises(ConfigError, match="val_size: with streaming, val_size must be a row count"):
        build_datasets(make_ctx(tiny_model, tmp_path, dataset="d", streaming=True, max_steps=2, val_size=0.1), "supervised")


def test_streaming_reads_lazily_and_trains_with_max_steps(tiny_model, tmp_path, capsys):
    write(tmp_path, {"d": {"file_name": "d.jsonl"}, "e": {"file_name": "e.json"}},
          d__jsonl="\n".join(json.dumps(r) for r in rows(30)), e__json=rows(5, "E"))
    splits = build_datasets(make_ctx(tiny_model, tmp_path, dataset="d,e", streaming=True, max_steps=2, val_size=4,
                                     mix_strategy="interleave_under"), "supervised")
    from datasets import IterableDataset

    assert isinstance(splits.train, IterableDataset)
    assert len(list(splits.eval)) == 4 and len(list(splits.train)) == 10 - 4
    from tuneforge.train.pipeline import run_training

    args = dict(model_name_or_path=str(tiny_model), template="llama3", dataset_dir=str(tmp_path), dataset="d", streaming=True,
                max_steps=2, output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, report_to="none",
                disable_tqdm=True, finetuning_type="lora", cutoff_len=64)
    prepared = prepare(None, [f"{k}={v}" for k, v in args.items()], manager=PluginManager(autoload=False))
    ctx = run_training(prepared)
    assert ctx.metrics["train_loss"] > 0
    assert "streaming the training data" in capsys.readouterr().out


# --- file types, pre-training, labels ---------------------------------------------------------


def test_local_file_types_and_folders(tiny_model, tmp_path):
    from datasets import Dataset

    data = rows(6)
    Dataset.from_list(data).to_csv(str(tmp_path / "d.csv"))
    Dataset.from_list(data).to_parquet(str(tmp_path / "d.parquet"))
    Dataset.from_list(data).save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "1.json").write_text(json.dumps(data[:3]))
    (tmp_path / "folder" / "2.jsonl").write_text("\n".join(json.dumps(r) for r in data[3:]))
    write(tmp_path, {"csv": {"file_name": "d.csv"}, "parquet": {"file_name": "d.parquet"},
                     "arrow": {"file_name": str(arrow.relative_to(tmp_path))}, "folder": {"file_name": "folder"}})
    reference = None
    for name in ("csv", "parquet", "arrow", "folder"):
        splits = build_datasets(make_ctx(tiny_model, tmp_path, dataset=name), "supervised")
        assert len(splits.train) == 6, name
        reference = reference or splits.train["input_ids"]
        assert splits.train["input_ids"] == reference, name


def test_pretraining_concatenates_and_chunks_to_cutoff_len(tiny_model, tmp_path):
    texts = [f"line {i} of the corpus, with a few more words to make it longer." for i in range(40)]
    (tmp_path / "corpus.txt").write_text("\n".join(texts))
    ctx = make_ctx(tiny_model, tmp_path, dataset=str(tmp_path / "corpus.txt"), stage="pt", cutoff_len=32)
    splits = build_datasets(ctx, "text")
    lengths = [len(ids) for ids in splits.train["input_ids"]]
    assert all(n == 32 for n in lengths[:-1]) and 0 < lengths[-1] <= 32
    stream = [t for ids in splits.train["input_ids"] for t in ids]
    expected = [t for text in texts for t in ctx.tokenizer.encode(text, add_special_tokens=False) + [ctx.tokenizer.eos_token_id]]
    assert stream == expected
    assert splits.train[0]["labels"] == splits.train[0]["input_ids"]
    unpacked = build_datasets(make_ctx(tiny_model, tmp_path, dataset=str(tmp_path / "corpus.txt"), stage="pt", cutoff_len=32,
                                       packing=False), "text")
    assert len(unpacked.train) == 40


def test_train_on_prompt_and_mask_history_reach_the_labels(tiny_model, tmp_path):
    row = {"conversations": [{"from": "human", "value": "first question"}, {"from": "gpt", "value": "first answer"},
                             {"from": "human", "value": "second question"}, {"from": "gpt", "value": "second answer"}]}
    write(tmp_path, {"c": {"file_name": "c.json", "formatting": "sharegpt"}}, c__json=[row])

    def trained_text(**overrides):
        ctx = make_ctx(tiny_model, tmp_path, dataset="c", **overrides)
        feature = build_datasets(ctx, "supervised").train[0]
        return ctx.tokenizer.decode([t for t in feature["labels"] if t != IGNORE_INDEX])

    default = trained_text()
    assert "first answer" in default and "second answer" in default and "question" not in default
    history = trained_text(mask_history=True)
    assert "second answer" in history and "first answer" not in history
    assert "first question" in trained_text(train_on_prompt=True)


def test_workers_give_the_same_features(tiny_model, tmp_path):
    write(tmp_path, {"d": {"file_name": "d.json"}}, d__json=rows(200))
    one = build_datasets(make_ctx(tiny_model, tmp_path, dataset="d", preprocessing_batch_size=50), "supervised")
    two = build_datasets(make_ctx(tiny_model, tmp_path, dataset="d", preprocessing_batch_size=50, preprocessing_num_workers=2),
                         "supervised")
    assert one.train["input_ids"] == two.train["input_ids"] and one.train["labels"] == two.train["labels"]


def test_rows_whose_response_does_not_fit_are_dropped_and_counted(tiny_model, tmp_path, capsys):
    long = {"instruction": "word " * 200, "input": "", "output": "answer"}
    write(tmp_path, {"d": {"file_name": "d.json"}}, d__json=rows(3) + [long])
    splits = build_datasets(make_ctx(tiny_model, tmp_path, dataset="d", cutoff_len=24), "supervised")
    assert len(splits.train) >= 3
    from tuneforge.errors import DataError

    write(tmp_path, {"d": {"file_name": "d.json"}}, d__json=[long])
    with pytest.raises(DataError, match="no row has a response token within cutoff_len=2"):
        build_datasets(make_ctx(tiny_model, tmp_path, dataset="d", cutoff_len=2), "supervised")


# --- preference data --------------------------------------------------------------------------


def test_pairwise_features_and_collator_from_llamafactory_dpo_demo(tiny_model):
    splits = build_datasets(make_ctx(tiny_model, ANCHOR, dataset="dpo_en_demo", stage="sft", max_samples=8, cutoff_len=256), "pairwise")
    row = splits.train[0]
    assert set(row) == {f"{s}_{n}" for s in ("chosen", "rejected") for n in ("input_ids", "attention_mask", "labels")}
    batch = splits.collator([splits.train[i] for i in range(4)])
    assert batch["input_ids"].shape[0] == 8 and batch["labels"].shape == batch["input_ids"].shape
    # the prompt is shared and masked; only the replies train
    n = len(row["chosen_labels"]) - len([t for t in row["chosen_labels"] if t != IGNORE_INDEX])
    assert row["chosen_input_ids"][:n] == row["rejected_input_ids"][:n]


def test_kto_features(tiny_model, tmp_path):
    data = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}], "label": i % 2 == 0}
            for i in range(4)]
    write(tmp_path, {"k": {"file_name": "k.json", "formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "label"},
                           "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}},
          k__json=data)
    splits = build_datasets(make_ctx(tiny_model, tmp_path, dataset="k"), "kto")
    assert splits.train["kto_tags"] == [True, False, True, False]
    batch = splits.collator([splits.train[i] for i in range(4)])
    assert batch["kto_tags"].tolist() == [True, False, True, False] and "kl_input_ids" in batch


# --- prompts for the stages that generate (ppo, grpo) ---------------------------------------------


def test_prompt_rows_end_where_the_reply_starts_and_keep_the_reply_as_reference(tiny_model, tmp_path, capsys):
    write(tmp_path, {"d": {"file_name": "d.json"}}, d__json=rows(3) + [{"instruction": "x " * 200, "input": "", "output": "long"}])
    ctx = make_ctx(tiny_model, tmp_path, dataset="d", cutoff_len=64)
    splits = build_datasets(ctx, "prompt")
    assert len(splits.train) == 3  # the over-long prompt is dropped and said, not cut
    assert "1 of 4 row(s) dropped: the prompt is longer than cutoff_len=64" in capsys.readouterr().out
    first = splits.train[0]
    expected = ctx.template.encode_prompt(ctx.tokenizer, [{"role": "user", "content": "What is 0 plus 0?"}])
    assert first["input_ids"] == expected
    assert ctx.tokenizer.decode(first["reference_ids"]) == "It is 0."
    batch = splits.collator([splits.train[0], splits.train[2]])
    # left padding: both prompts end at the last column, where generation continues
    lengths = [len(splits.train[0]["input_ids"]), len(splits.train[2]["input_ids"])]
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    assert batch["attention_mask"][:, -1].tolist() == [1, 1]
    assert batch["input_ids"][1, -lengths[1]:].tolist() == splits.train[2]["input_ids"]


def test_prompt_stages_refuse_preference_rows(tiny_model, tmp_path):
    from tuneforge.errors import DataError

    write(tmp_path, {"p": {"file_name": "p.json", "ranking": True, "columns": {"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"}}},
          p__json=[{"instruction": "hi", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="this stage trains on prompt data"):
        build_datasets(make_ctx(tiny_model, tmp_path, dataset="p"), "prompt")
