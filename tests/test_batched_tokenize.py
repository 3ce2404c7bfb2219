"""Batched SFT tokenisation gives exactly the per-row features.

The supervised featurizer renders a whole batch of conversations to text pieces and encodes all of
them in one fast-tokenizer call (issue 20). Nothing may change a token: these tests compare every
column, row by row, against the one-conversation-at-a-time path on a few hundred real rows of
LLaMA-Factory's demo data (alpaca, multi-turn sharegpt with tools and function calls) under several
templates (system in the user turn, a default system, efficient_eos, reasoning with thoughts dropped
from history, the tokenizer's own Jinja template that rewrites history) and settings (truncation,
train_on_prompt, mask_history, default_system, enable_thinking).
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from transformers import AutoTokenizer

from tuneforge.data.template import Template
from tuneforge.data.tokenize import Settings, _supervised_rows, as_arrow, batch_encodable, supervised_batch
from tuneforge.data.tokenizer_template import TokenizerTemplate
from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model
from tuneforge.plugins.templates.builtin import _definitions

from .conftest import ANCHOR

ROLES = {"human": "user", "gpt": "assistant", "function_call": "function", "observation": "observation"}


def _examples() -> list[dict]:
    alpaca = json.loads((ANCHOR / "alpaca_en_demo.json").read_text())[:130]
    tools = json.loads((ANCHOR / "glaive_toolcall_en_demo.json").read_text())[:80]
    out = []
    for i, row in enumerate(alpaca):
        prompt = row["instruction"] + ("\n" + row["input"] if row["input"] else "")
        reply = row["output"][:400]  # long enough to be cut at the cutoff_len below; short enough to be quick
        example = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]}
        if i % 3 == 0:
            example["system"] = "Answer as a pirate." if i % 2 else "  Leading spaces, then\na newline."
        out.append(example)
    for row in tools:
        messages = [{"role": ROLES[turn["from"]], "content": turn["value"]} for turn in row["conversations"]]
        out.append({"messages": messages, "tools": row["tools"]})
    # thoughts in replies (reasoning templates keep them in the target, drop them from history), odd
    # whitespace at piece boundaries, an empty reply, non-ASCII text
    think = "<think>\nLet me add.\n</think>\n\n"
    out += [
        {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": think + "2"},
                      {"role": "user", "content": "and 2+2?"}, {"role": "assistant", "content": think + "4"}]},
        {"messages": [{"role": "user", "content": "\n\n  spaced  \n"}, {"role": "assistant", "content": " \n lead"}]},
        {"messages": [{"role": "user", "content": "empty reply next"}, {"role": "assistant", "content": ""},
                      {"role": "user", "content": "now say hi"}, {"role": "assistant", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "Grüße, 你好 👋"}, {"role": "assistant", "content": "Tschüss — 再见"}]},
    ]
    return out


EXAMPLES = _examples()
BATCH = {"_example": [json.dumps(e, ensure_ascii=False) for e in EXAMPLES]}

SETTINGS = {
    "plain": Settings(cutoff_len=1024),
    "truncated": Settings(cutoff_len=48),
    "train_on_prompt": Settings(cutoff_len=96, train_on_prompt=True),
    "mask_history": Settings(cutoff_len=160, mask_history=True),
    "default_system_no_thinking": Settings(cutoff_len=512, default_system="You are terse.", enable_thinking=False),
}
# template name (or "auto": the tokenizer's own Jinja template), tiny-model family of the tokenizer, settings
CASES = [
    ("llama3", "llama3", ("plain", "truncated", "train_on_prompt", "mask_history")),
    ("qwen", "qwen2", ("default_system_no_thinking", "truncated")),  # a default system prompt of its own
    ("mistral", "mistral", ("plain", "train_on_prompt")),  # system text inside the first user turn
    ("gemma", "gemma", ("mask_history",)),
    ("qwen3", "qwen3", ("plain", "default_system_no_thinking", "mask_history")),  # thoughts dropped from history
    ("falcon", "llama3", ("plain", "truncated")),  # efficient_eos
    ("auto", "qwen3", ("plain", "default_system_no_thinking", "mask_history")),  # Jinja that rewrites history
]


@pytest.fixture(scope="module")
def tokenizers():
    return {family: AutoTokenizer.from_pretrained(cached_tiny_model(family)) for family in {c[1] for c in CASES}}


def _template(name: str, tokenizer) -> Template:
    if name == "auto":
        return TokenizerTemplate.from_tokenizer(tokenizer)
    return Template.from_definition(name, _definitions()[name])


def _outcome(function):
    try:
        return function()
    except Exception as exc:  # the same error, for the same row, is the same outcome
        return (type(exc), str(exc))


@pytest.mark.parametrize("name,family,settings", CASES, ids=[c[0] for c in CASES])
def test_batched_features_equal_the_per_row_features(name, family, settings, tokenizers):
    tokenizer = tokenizers[family]
    template = _template(name, tokenizer)
    assert batch_encodable(template, tokenizer)
    for label in settings:
        setting = SETTINGS[label]
        per_row = _outcome(lambda: _supervised_rows(EXAMPLES, template, tokenizer, setting))
        batched = _outcome(lambda: supervised_batch(BATCH, template=template, tokenizer=tokenizer, settings=setting, report=True))
        if isinstance(per_row, tuple):  # a row this template cannot render: the batch fails the same way
            assert batched == per_row
            continue
        assert batched.keys() == per_row.keys()
        assert len(batched["input_ids"]) == len(per_row["input_ids"]) > 150, label
        for column in batched:
            for i, (got, want) in enumerate(zip(batched[column], per_row[column])):
                assert got == want, f"{name}/{label}: row {i} column {column} differs"
        if setting.cutoff_len == 48:
            assert sum(batched["_truncated"]) > 100  # the truncation path really ran
        # the Arrow table built from flat arrays holds exactly these rows, typed as datasets types the lists
        table = supervised_batch(BATCH, template=template, tokenizer=tokenizer, settings=setting, report=True, arrow=True)
        assert table.equals(as_arrow(lambda batch: per_row)(BATCH)), f"{name}/{label}: the Arrow table differs"


def test_batched_path_refuses_what_the_template_refuses(tokenizers):
    from tuneforge.errors import TuneforgeError

    tokenizer = tokenizers["llama3"]
    template = _template("falcon", tokenizer)
    with pytest.raises(TuneforgeError, match="efficient_eos"):
        supervised_batch(BATCH, template=template, tokenizer=tokenizer, settings=Settings(cutoff_len=64, train_on_prompt=True))


def test_a_template_that_encodes_its_own_way_is_encoded_row_by_row(tokenizers):
    tokenizer = tokenizers["llama3"]

    class Shouting(Template):
        def encode_supervised(self, tokenizer, messages, system=None, cutoff_len=2048, train_on_prompt=False, **kwargs):
            loud = [{**m, "content": m["content"].upper()} for m in messages]
            return super().encode_supervised(tokenizer, loud, system, cutoff_len, train_on_prompt, **kwargs)

    base = _template("llama3", tokenizer)
    shouting = Shouting(**{f: getattr(base, f) for f in base.__dataclass_fields__})
    assert not batch_encodable(shouting, tokenizer)
    settings = replace(SETTINGS["plain"], cutoff_len=256)
    out = supervised_batch({"_example": BATCH["_example"][:5]}, template=shouting, tokenizer=tokenizer, settings=settings)
    first = EXAMPLES[0]["messages"]
    loud = [{**m, "content": m["content"].upper()} for m in first]
    assert out["input_ids"][0] == base.encode_supervised(tokenizer, loud, EXAMPLES[0].get("system"), 256)[0]


def test_arrow_handover_stores_the_features_datasets_infers_from_lists(tokenizers):
    """The featurizer's columns handed to datasets as one Arrow table (as_arrow) are stored with the same
    features and values as the lists datasets types itself (int32 ids, int8 mask, int64 labels)."""
    from functools import partial

    from datasets import Dataset

    from tuneforge.data.tokenize import TRUNCATED, as_arrow

    tokenizer = tokenizers["llama3"]
    featurize = partial(supervised_batch, template=_template("llama3", tokenizer), tokenizer=tokenizer,
                        settings=SETTINGS["truncated"], report=True)
    raw = Dataset.from_dict({"_example": BATCH["_example"][:60]})
    kwargs = {"batched": True, "batch_size": 16, "remove_columns": ["_example"], "load_from_cache_file": False}
    lists = raw.map(featurize, **kwargs)
    arrow = raw.map(as_arrow(featurize), **kwargs)
    assert arrow.features == lists.features
    assert str(lists.features["input_ids"].feature.dtype) == "int32"  # datasets' own narrowing, kept
    assert arrow.data.table.equals(lists.data.table)
    assert sum(arrow[TRUNCATED]) > 0
    # a batch that does not fit the narrow types stays lists, typed by datasets as before
    huge = as_arrow(lambda batch: {"input_ids": [[2**40]], "attention_mask": [[1]], "labels": [[2**40]], TRUNCATED: [False]})
    assert isinstance(huge({})["input_ids"], list)


def test_in_process_tokenising_stores_what_datasets_map_stores(tokenizers):
    """dataset.py's one-process path (the example dicts straight to the featurizer, no JSON column, no
    datasets.map) gives the same table, row order included, and falls back to datasets.map when a batch
    is not an Arrow table."""
    from functools import partial

    from datasets import Dataset

    from tuneforge.data.dataset import _tokenise_here
    from tuneforge.data.tokenize import as_arrow

    tokenizer = tokenizers["llama3"]
    featurize = as_arrow(partial(supervised_batch, template=_template("llama3", tokenizer), tokenizer=tokenizer,
                                 settings=SETTINGS["truncated"], report=True))
    mapped = Dataset.from_dict({"_example": BATCH["_example"]}).map(
        featurize, batched=True, batch_size=16, remove_columns=["_example"], load_from_cache_file=False)
    here = _tokenise_here(featurize, [dict(e) for e in EXAMPLES], 16, "test rows")
    assert len(here) == len(mapped) > 16 * 4
    assert here.features == mapped.features
    assert here.data.table.equals(mapped.data.table)
    lists = partial(supervised_batch, template=_template("llama3", tokenizer), tokenizer=tokenizer, settings=SETTINGS["plain"])
    assert _tokenise_here(lists, EXAMPLES[:20], 16, "test rows") is None


@pytest.mark.parametrize("name,family,label", [("llama3", "llama3", "truncated"), ("auto", "qwen3", "mask_history")])
def test_data_doctor_lengths_from_the_batched_path_equal_the_per_row_lengths(name, family, label, tokenizers):
    from tuneforge.data.doctor import lengths_batch
    from tuneforge.data.tokenize import NO_CUTOFF, encode_conversation

    tokenizer, settings = tokenizers[family], SETTINGS[label]
    template = _template(name, tokenizer)
    examples = EXAMPLES[:40] + EXAMPLES[-30:]
    got = lengths_batch({"_example": [json.dumps(e) for e in examples]}, template=template, tokenizer=tokenizer,
                        settings=settings, kind="supervised")
    want = {"full": [], "kept": [], "trained": []}
    for example in examples:
        full, _ = encode_conversation(template, tokenizer, example, settings, cutoff_len=NO_CUTOFF)
        ids, labels = encode_conversation(template, tokenizer, example, settings)
        want["full"].append(len(full))
        want["kept"].append(len(ids))
        want["trained"].append(sum(label != -100 for label in labels))
    assert {k: got[k] for k in want} == want
    assert max(want["full"]) > settings.cutoff_len  # some rows were cut
