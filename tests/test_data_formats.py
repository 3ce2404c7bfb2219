"""Dataset formats (alpaca, sharegpt, openai) into the common example shape, and bad-row reports.

LLaMA-Factory's own dataset_info.json entries and demo files (tests/conftest.ANCHOR) load unchanged.
"""

from __future__ import annotations

import json

import pytest

from tuneforge.data.example import check_example
from tuneforge.data.loading import load_examples
from tuneforge.data.registry import DatasetAttr
from tuneforge.errors import DataError, RowError
from tuneforge.plan import prepare
from tuneforge.plugins.formats import alpaca, openai, sharegpt
from tuneforge.train.context import RunContext

from .conftest import ANCHOR


def attr(**kwargs) -> DatasetAttr:
    return DatasetAttr(name="t", source="file", path="t.json", **kwargs)


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def converted(manager, dataset_dir, names, kind="supervised", **overrides):
    """Examples of each named dataset, read through the config -> plan -> loading path."""
    args = ["model_name_or_path=unused", f"dataset={names}", f"dataset_dir={dataset_dir}", *[f"{k}={v}" for k, v in overrides.items()]]
    prepared = prepare(None, args, manager=manager)
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=False)
    return ctx, load_examples(ctx, prepared.plan.datasets, kind)


# --- alpaca -------------------------------------------------------------------------------------


def test_alpaca_joins_instruction_and_input_and_keeps_history_system_tools():
    row = {"instruction": "Translate", "input": "bonjour", "output": "hello", "system": "be brief",
           "history": [["hi", "hey"]], "tools": [{"name": "f"}]}
    a = attr(columns={"history": "history", "system": "system", "tools": "tools"})
    example = alpaca.convert(row, a)
    assert example == {
        "messages": [user("hi"), assistant("hey"), user("Translate\nbonjour"), assistant("hello")],
        "system": "be brief", "tools": '[{"name": "f"}]',
    }
    check_example(example, "supervised")


def test_alpaca_ranking_kto_and_text_rows():
    assert alpaca.convert({"instruction": "q", "chosen": "good", "rejected": "bad"}, attr(ranking=True)) == {
        "messages": [user("q")], "system": None, "tools": None, "chosen": "good", "rejected": "bad"}
    # the older layout: output: [chosen, rejected]
    assert alpaca.convert({"instruction": "q", "output": ["good", "bad"]}, attr(ranking=True))["rejected"] == "bad"
    kto = alpaca.convert({"instruction": "q", "output": "a", "label": False}, attr(columns={"kto_tag": "label"}))
    assert kto["kto_tag"] is False and kto["messages"][-1] == assistant("a")
    assert alpaca.convert({"instruction": "q", "output": "a"}, attr(data_kind="text")) == {"text": "q"}
    assert alpaca.convert({"text": "plain"}, attr(data_kind="text")) == {"text": "plain"}


@pytest.mark.parametrize("row, field, reason", [
    ({"instruction": 3, "output": "x"}, "instruction", "must be a string, got int"),
    ({"output": "x"}, "instruction", "missing (prompt)"),
    ({"instruction": "q", "output": " "}, "output", "empty response"),
    ({"instruction": "q"}, "output", "missing (response)"),
    ({"instruction": "q", "output": "a", "history": [["only one"]]}, "history[0]", "must be an [instruction, response] pair of strings"),
])
def test_alpaca_bad_rows_name_field_and_reason(row, field, reason):
    with pytest.raises(RowError) as info:
        alpaca.convert(row, attr(columns={"history": "history"}))
    assert (info.value.field, info.value.reason) == (field, reason)


# --- sharegpt -----------------------------------------------------------------------------------


def test_sharegpt_tool_roles_system_turn_and_tools_column():
    row = {
        "conversations": [
            {"from": "system", "value": "sys"},
            {"from": "human", "value": "weather?"},
            {"from": "function_call", "value": '{"name": "w", "arguments": {}}'},
            {"from": "observation", "value": '{"t": 20}'},
            {"from": "gpt", "value": "20 degrees"},
        ],
        "tools": '[{"name": "w"}]',
    }
    example = sharegpt.convert(row, attr(formatting="sharegpt", columns={"messages": "conversations", "tools": "tools"}))
    assert [m["role"] for m in example["messages"]] == ["user", "function", "observation", "assistant"]
    assert example["system"] == "sys" and example["tools"] == '[{"name": "w"}]'
    check_example(example, "supervised")


def test_sharegpt_custom_tags_and_default_aliases():
    a = attr(columns={"messages": "msgs"}, tags={"role_tag": "r", "content_tag": "c", "user_tag": "Q", "assistant_tag": "A"})
    example = sharegpt.convert({"msgs": [{"r": "Q", "c": "hi"}, {"r": "A", "c": "yo"}]}, a)
    assert example["messages"] == [user("hi"), assistant("yo")]
    # with the default tags, user/assistant are accepted for human/gpt
    example = sharegpt.convert({"conversations": [{"from": "user", "value": "hi"}, {"from": "assistant", "value": "yo"}]}, attr())
    assert example["messages"] == [user("hi"), assistant("yo")]
    with pytest.raises(RowError) as info:  # a tag that was overridden loses its default alias
        sharegpt.convert({"msgs": [{"r": "human", "c": "hi"}, {"r": "A", "c": "yo"}]}, a)
    assert info.value.field == "msgs[0].r" and "unknown role 'human'" in info.value.reason


@pytest.mark.parametrize("turns, field, reason", [
    ([{"from": "gpt", "value": "a"}], "conversations[0].from", "expected user or observation here, got assistant"),
    ([{"from": "human", "value": "q"}, {"from": "human", "value": "q"}], "conversations[1].from", "expected assistant or function here, got user"),
    ([{"from": "human", "value": "q"}], "conversations", "the conversation must end with an assistant turn"),
    ([{"from": "human", "value": "q"}, {"from": "gpt", "value": ""}], "conversations[1].value", "empty response"),
    ([{"from": "human", "value": "q"}, {"from": "gpt", "value": 5}], "conversations[1].value", "must be a string, got int"),
    ([{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}], "conversations[1].from", "unknown role 'robot'"),
    ([{"from": "human"}], "conversations[0].value", "missing 'value'"),
    ([{"from": "human", "value": "q"}, {"from": "system", "value": "s"}], "conversations[1]", "a system turn may only come first"),
    ("not a list", "conversations", "must be a non-empty list of turns"),
])
def test_sharegpt_bad_rows_name_field_and_reason(turns, field, reason):
    with pytest.raises(RowError) as info:
        sharegpt.convert({"conversations": turns}, attr())
    assert info.value.field == field and info.value.reason.startswith(reason), info.value


def test_sharegpt_ranking_and_kto():
    row = {"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": "good"},
           "rejected": {"from": "gpt", "value": "bad"}}
    example = sharegpt.convert(row, attr(ranking=True))
    assert example["messages"] == [user("q")] and (example["chosen"], example["rejected"]) == ("good", "bad")
    with pytest.raises(RowError, match="must be an assistant turn"):
        sharegpt.convert({**row, "rejected": {"from": "human", "value": "x"}}, attr(ranking=True))
    kto = sharegpt.convert({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "label": True},
                           attr(columns={"kto_tag": "label"}))
    assert kto["kto_tag"] is True
    with pytest.raises(RowError) as info:
        sharegpt.convert({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "label": 3},
                         attr(columns={"kto_tag": "label"}))
    assert info.value.field == "label"


# --- openai -------------------------------------------------------------------------------------


def test_openai_tool_calls_become_function_turns_and_tool_results_observations():
    row = {
        "messages": [
            {"role": "developer", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "weather in "}, {"type": "text", "text": "Paris?"}]},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "1", "type": "function", "function": {"name": "w", "arguments": '{"city": "Paris"}'}},
                {"id": "2", "type": "function", "function": {"name": "t", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "1", "content": "20C"},
            {"role": "tool", "tool_call_id": "2", "content": "noon"},
            {"role": "assistant", "content": "20C at noon"},
        ],
        "tools": [{"type": "function", "function": {"name": "w"}}],
    }
    example = openai.convert(row, attr(formatting="openai"))
    assert example["system"] == "sys"
    assert [m["role"] for m in example["messages"]] == ["user", "function", "observation", "assistant"]
    assert example["messages"][0]["content"] == "weather in Paris?"
    assert json.loads(example["messages"][1]["content"]) == [{"name": "w", "arguments": {"city": "Paris"}}, {"name": "t", "arguments": {}}]
    assert example["messages"][2]["content"] == "20C" + openai.TOOL_RESPONSE_JOINER + "noon"
    assert json.loads(example["tools"])[0]["function"]["name"] == "w"
    check_example(example, "supervised")


def test_openai_bad_rows_and_preference_rows():
    with pytest.raises(RowError) as info:
        openai.convert({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
            {"function": {"name": "w", "arguments": "{broken"}}]}]}, attr())
    assert info.value.field == "messages[1].tool_calls[0].function.arguments"
    with pytest.raises(RowError) as info:
        openai.convert({"messages": [{"role": "assistant", "content": "a"}]}, attr())
    assert info.value.field == "messages[0].role"
    pref = openai.convert({"messages": [{"role": "user", "content": "q"}],
                           "chosen": [{"role": "assistant", "content": "good"}], "rejected": {"role": "assistant", "content": "bad"}},
                          attr(ranking=True))
    assert (pref["chosen"], pref["rejected"]) == ("good", "bad")


# --- LLaMA-Factory's files, unchanged -----------------------------------------------------------


def test_llamafactory_dataset_info_and_demo_files_load_unchanged(manager):
    _, results = converted(manager, ANCHOR, "identity,alpaca_en_demo")
    identity, demo = results
    assert len(identity.examples) == 91 and len(demo.examples) == 999
    assert identity.examples[0]["messages"] == [user("hi"), assistant(
        "Hello! I am {{name}}, an AI assistant developed by {{author}}. How can I assist you today?")]
    _, (dpo,) = converted(manager, ANCHOR, "dpo_en_demo", kind="pairwise")
    assert len(dpo.examples) == 300
    assert dpo.examples[0]["messages"][0]["content"].startswith("Hi! I'd like to create a new language game")
    assert dpo.examples[0]["chosen"].startswith("That sounds like a fun and engaging idea!")
    _, (named,) = converted(manager, ANCHOR, "identity", replace_placeholders="{name: Greatbot, author: Allen}")
    assert "Greatbot" in named.examples[0]["messages"][1]["content"]


def test_custom_columns_and_tags_load_unchanged(manager, tmp_path):
    """dataset_info.json entries as LLaMA-Factory documents them, with renamed columns and tags."""
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps({"question": f"q{i}", "ctx": "", "answer": f"a{i}", "sys": "S"}) for i in range(3)))
    (tmp_path / "chat.json").write_text(json.dumps([{"dialog": [{"speaker": "me", "text": "hi"}, {"speaker": "bot", "text": "yo"},
                                                               {"speaker": "me", "text": "call"}, {"speaker": "tool_req", "text": "{}"},
                                                               {"speaker": "tool_res", "text": "ok"}, {"speaker": "bot", "text": "done"}],
                                                     "defs": "[]"}]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "qa": {"file_name": "qa.jsonl", "columns": {"prompt": "question", "query": "ctx", "response": "answer", "system": "sys"}},
        "chat": {"file_name": "chat.json", "formatting": "sharegpt",
                 "columns": {"messages": "dialog", "tools": "defs"},
                 "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot",
                          "function_tag": "tool_req", "observation_tag": "tool_res"}},
    }))
    _, (qa, chat) = converted(manager, tmp_path, "qa,chat")
    assert qa.examples[2] == {"messages": [user("q2"), assistant("a2")], "system": "S", "tools": None}
    assert [m["role"] for m in chat.examples[0]["messages"]] == ["user", "assistant", "user", "function", "observation", "assistant"]
    assert chat.examples[0]["tools"] == "[]"


def test_bad_rows_stop_with_file_row_field_or_are_skipped_with_the_count(manager, tmp_path, capsys):
    good = {"instruction": "q", "output": "a"}
    rows = [good, {"instruction": "q", "output": ""}, good, {"instruction": ["x"], "output": "a"}, "oops", {"input": "i", "output": "a"}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"conversations": [{"from": "gpt", "value": "a"}]}]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({
        "a": {"file_name": "a.json"}, "b": {"file_name": "b.jsonl", "formatting": "sharegpt"}}))
    with pytest.raises(DataError) as info:
        converted(manager, tmp_path, "a,b")
    message = str(info.value)
    for line in (
        "dataset 'a' has 4 bad row(s) of 6:",
        f"{tmp_path / 'a.json'}: row 2: output: empty response",
        f"{tmp_path / 'a.json'}: row 4: instruction: must be a string, got list",
        f"{tmp_path / 'a.json'}: row 5: (row): must be an object, got str",
        f"{tmp_path / 'a.json'}: row 6: instruction: missing (prompt)",
        "dataset 'b' has 1 bad row(s) of 2:",
        f"{tmp_path / 'b.jsonl'}: row 2: conversations[0].from: expected user or observation here, got assistant",
        "set skip_bad_rows: true",
    ):
        assert line in message, (line, message)
    assert "no valid samples" not in message

    _, (a, b) = converted(manager, tmp_path, "a,b", skip_bad_rows="true")
    assert len(a.examples) == 2 and len(b.examples) == 1
    out = capsys.readouterr().out
    assert "dataset 'a': skipped 4 bad row(s) of 6 (skip_bad_rows): 1x output: empty response" in out
    assert "dataset 'b': skipped 1 bad row(s) of 2" in out

    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "q", "output": ""}] * 3))
    with pytest.raises(DataError, match=r"dataset 'a' .*all 3 rows are bad; the first: .*row 1: output: empty response"):
        converted(manager, tmp_path, "a", skip_bad_rows="true")


def test_a_wrong_kind_of_dataset_for_the_stage_is_one_clear_error(manager):
    with pytest.raises(DataError, match="dataset 'dpo_en_demo' has pairwise rows, but this stage trains on supervised data"):
        converted(manager, ANCHOR, "dpo_en_demo")
