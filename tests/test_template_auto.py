"""``template: auto``: the tokenizer's own Jinja chat template, with exact reply masks.

Compared against the built-in templates on the tiny models (identical ids and labels), against
``apply_chat_template`` itself (ids, and ``return_assistant_tokens_mask`` for generation markers),
on a template that rewrites history (Qwen3), and end to end (check, data, training, chat, export)
on a tiny model given a template no built-in knows.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
from transformers import AutoTokenizer

from tuneforge.data.template import IGNORE_INDEX, Template
from tuneforge.data.tokenizer_template import RenderError, TokenizerTemplate
from tuneforge.errors import TuneforgeError
from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model
from tuneforge.plugins.templates.builtin import _definitions

from .conftest import run_cli

SYSTEM = "Be brief."
MESSAGES = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
]
# family -> the built-in template whose rendering the family's own Jinja template must equal
BUILTIN = {"llama3": "llama3", "qwen2": "qwen", "mistral": "mistral", "gemma": "gemma"}

# A chat format no built-in template knows ("### Q" / "### A"), ending replies with <|eot_id|>.
CUSTOM = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ '### S\\n' + m['content'] + '\\n' }}"
    "{% elif m['role'] == 'user' %}{{ '### Q\\n' + m['content'] + '\\n### A\\n' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] + '<|eot_id|>\\n' }}{% endif %}"
    "{% endfor %}"
)
# The same format with generation markers; the newline after <|eot_id|> is outside them.
MARKED = CUSTOM.replace("{{ m['content'] + '<|eot_id|>\\n' }}",
                        "{% generation %}{{ m['content'] + '<|eot_id|>' }}{% endgeneration %}{{ '\\n' }}")


@pytest.fixture(scope="module")
def tokenizers():
    return {family: AutoTokenizer.from_pretrained(cached_tiny_model(family)) for family in (*BUILTIN, "qwen3")}


def custom_tokenizer(source: str):
    tokenizer = AutoTokenizer.from_pretrained(cached_tiny_model("llama3"))
    tokenizer.chat_template = source
    return tokenizer


def trained_text(tokenizer, ids, labels) -> list[str]:
    """Each run of trained tokens, decoded."""
    runs, run = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            runs.append(tokenizer.decode(run))
            run = []
    if run:
        runs.append(tokenizer.decode(run))
    return runs


@pytest.mark.parametrize("family", sorted(BUILTIN))
def test_auto_gives_the_ids_and_labels_of_the_matching_builtin_template(family, tokenizers):
    tokenizer = tokenizers[family]
    auto = TokenizerTemplate.from_tokenizer(tokenizer)
    builtin = Template.from_definition(BUILTIN[family], _definitions()[BUILTIN[family]])
    assert not auto.history_rewritten(tokenizer, MESSAGES, SYSTEM)
    for kwargs in ({}, {"mask_history": True}, {"cutoff_len": 30}):
        assert auto.encode_supervised(tokenizer, MESSAGES, SYSTEM, **kwargs) == builtin.encode_supervised(tokenizer, MESSAGES, SYSTEM, **kwargs)
    assert auto.encode_prompt(tokenizer, MESSAGES[:3], SYSTEM) == builtin.encode_prompt(tokenizer, MESSAGES[:3], SYSTEM)
    # the generation prompt is exactly the tokenizer's own rendering
    hf = [{"role": "system", "content": SYSTEM}] + MESSAGES[:3]
    assert auto.encode_prompt(tokenizer, MESSAGES[:3], SYSTEM) == tokenizer.encode(
        tokenizer.apply_chat_template(hf, tokenize=False, add_generation_prompt=True), add_special_tokens=False)


def test_auto_labels_are_exactly_the_replies(tokenizers):
    tokenizer = tokenizers["llama3"]
    ids, labels = TokenizerTemplate.from_tokenizer(tokenizer).encode_supervised(tokenizer, MESSAGES, SYSTEM)
    assert trained_text(tokenizer, ids, labels) == ["Hello!<|eot_id|>", "4.<|eot_id|>"]
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}] + MESSAGES, tokenize=False)


def test_auto_stop_words_come_from_the_template(tokenizers):
    assert TokenizerTemplate.from_tokenizer(tokenizers["qwen2"]).stop_words == ("<|im_end|>",)
    assert TokenizerTemplate.from_tokenizer(tokenizers["gemma"]).stop_words == ("<end_of_turn>",)
    tokenizer = tokenizers["llama3"]
    assert TokenizerTemplate.from_tokenizer(tokenizer).stop_token_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|eot_id|>")]


def test_qwen3_rewrites_history_so_only_the_last_reply_trains_as_at_inference(tokenizers):
    tokenizer = tokenizers["qwen3"]
    auto = TokenizerTemplate.from_tokenizer(tokenizer)
    assert auto.history_rewritten(tokenizer, MESSAGES, SYSTEM)
    ids, labels = auto.encode_supervised(tokenizer, MESSAGES, SYSTEM)
    # the whole row is the model's own rendering of the conversation ...
    full = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}] + MESSAGES, tokenize=False)
    assert ids == tokenizer.encode(full, add_special_tokens=False)
    # ... and only the last reply (with the empty think block the template gives it) is trained
    assert trained_text(tokenizer, ids, labels) == ["<think>\n\n</think>\n\n4.<|im_end|>\n"]
    # preference data (only the last reply is a target): the same as the built-in qwen3
    builtin = Template.from_definition("qwen3", _definitions()["qwen3"])
    assert auto.encode_oneturn(tokenizer, MESSAGES, SYSTEM) == builtin.encode_oneturn(tokenizer, MESSAGES, SYSTEM)
    # (mask_history differs on purpose: the built-in qwen3, like LLaMA-Factory, renders every reply of an SFT row
    # with a think block, history included; auto renders history as the model's own template does)
    assert auto.encode_supervised(tokenizer, MESSAGES, SYSTEM, mask_history=True) == (ids, labels)
    # one exchange: no rewriting, the same as the built-in qwen3
    assert not auto.history_rewritten(tokenizer, MESSAGES[:2], SYSTEM)
    assert auto.encode_supervised(tokenizer, MESSAGES[:2], SYSTEM) == builtin.encode_supervised(tokenizer, MESSAGES[:2], SYSTEM)
    # enable_thinking=False: the empty block is given in the prompt, not trained
    ids, labels = auto.encode_supervised(tokenizer, MESSAGES[:2], SYSTEM, enable_thinking=False)
    assert trained_text(tokenizer, ids, labels) == ["Hello!<|im_end|>\n"]
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n")


def test_tools_calls_and_results_pass_through_the_templates_own_variables(tokenizers):
    tokenizer = tokenizers["qwen2"]
    tools = [{"name": "add", "description": "Add two numbers.", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}]
    messages = [
        {"role": "user", "content": "1+2?"},
        {"role": "function", "content": json.dumps({"name": "add", "arguments": {"a": 1, "b": 2}})},
        {"role": "observation", "content": "3"},
        {"role": "assistant", "content": "It is 3."},
    ]
    auto = TokenizerTemplate.from_tokenizer(tokenizer)
    ids, labels = auto.encode_supervised(tokenizer, messages, "Be exact.", tools=json.dumps(tools))
    hf = [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},
        {"role": "tool", "content": "3"},
        {"role": "assistant", "content": "It is 3."},
    ]
    wrapped = [{"type": "function", "function": tools[0]}]
    full = tokenizer.apply_chat_template(hf, tools=wrapped, tokenize=False)
    assert ids == tokenizer.encode(full, add_special_tokens=False)
    assert "# Tools" in full and '"name": "add"' in full and "Be exact." in full
    assert trained_text(tokenizer, ids, labels) == [
        '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>\n', "It is 3.<|im_end|>\n"]


def test_generation_markers_give_the_mask_apply_chat_template_gives():
    tokenizer = custom_tokenizer(MARKED)
    auto = TokenizerTemplate.from_tokenizer(tokenizer)
    assert "generation" in auto.how
    ids, labels = auto.encode_supervised(tokenizer, MESSAGES, SYSTEM)
    hf = [{"role": "system", "content": SYSTEM}] + MESSAGES
    out = tokenizer.apply_chat_template(hf, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    # our row is HF's rendering without the untrained newline after the last reply
    assert ids == list(out["input_ids"])[: len(ids)] and tokenizer.decode(list(out["input_ids"])[len(ids):]) == "\n"
    assert [label != IGNORE_INDEX for label in labels] == [bool(m) for m in out["assistant_masks"][: len(ids)]]
    assert trained_text(tokenizer, ids, labels) == ["Hello!<|eot_id|>", "4.<|eot_id|>"]


def test_a_reply_that_does_not_start_with_the_generation_prompt_is_an_error_not_a_guess():
    # the generation prompt says "### A\n" but a rendered reply starts "### Answer\n"
    odd = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\\n' }}"
           "{% else %}{{ '### Answer\\n' + m['content'] + '<|eot_id|>' }}{% endif %}{% endfor %}"
           "{% if add_generation_prompt %}{{ '### A\\n' }}{% endif %}")
    tokenizer = custom_tokenizer(odd)
    with pytest.raises(RenderError, match="does not start with its own generation prompt"):
        TokenizerTemplate.from_tokenizer(tokenizer).encode_supervised(tokenizer, MESSAGES[:2])


def test_a_tokenizer_without_a_chat_template_is_a_clear_error():
    tokenizer = custom_tokenizer(CUSTOM)
    tokenizer.chat_template = None
    with pytest.raises(TuneforgeError, match="this tokenizer has none"):
        TokenizerTemplate.from_tokenizer(tokenizer)


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory):
    """The tiny llama3 model with a chat template no built-in template knows."""
    folder = tmp_path_factory.mktemp("custom") / "model"
    shutil.copytree(cached_tiny_model("llama3"), folder)
    tokenizer = custom_tokenizer(CUSTOM)
    tokenizer.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).chat_template == CUSTOM
    return folder


def write_config(tmp_path, model, **values) -> str:
    rows = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a + b}."} for a in range(4) for b in range(4)]
    (tmp_path / "sums.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"sums": {"file_name": "sums.json"}}))
    values = {"model_name_or_path": str(model), "dataset": "sums", "dataset_dir": str(tmp_path), "cutoff_len": 64,
              "output_dir": str(tmp_path / "out"), "finetuning_type": "lora", "lora_rank": 4, "max_steps": 3,
              "per_device_train_batch_size": 4, "learning_rate": "5.0e-3", "report_to": "none", "disable_tqdm": "true",
              "overwrite_output_dir": "true", **values}
    path = tmp_path / "config.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
    return str(path)


def test_check_and_data_say_how_auto_renders(custom_model, tmp_path):
    config = write_config(tmp_path, custom_model, template="auto")
    result = run_cli("check", config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"template\s+auto\s+\[", result.stdout), result.stdout
    assert "template auto: the tokenizer's own chat template; replies found by rendering turn by turn" in result.stdout
    result = run_cli("data", config)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "template auto" in result.stdout
    assert "[[0.<|eot_id|>\n]]" in result.stdout  # the first row: "0 plus 0" -> "0.", trained with its end token


def test_check_says_when_the_models_template_rewrites_history(tmp_path):
    result = run_cli("check", write_config(tmp_path, cached_tiny_model("qwen3"), template="auto"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "renders earlier turns differently" in result.stdout and "train only their last reply" in result.stdout


def test_auto_on_a_model_without_a_chat_template_fails_at_check(custom_model, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(custom_model, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    result = run_cli("check", write_config(tmp_path, bare, template="auto"))
    assert result.returncode != 0
    assert "has no chat template of its own" in result.stderr


@pytest.mark.slow
def test_an_unknown_template_trains_chats_and_exports_with_the_tokenizers_own_template(custom_model, tmp_path):
    from tuneforge.chat.engine import engine_for
    from tuneforge.plan import prepare
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.train.pipeline import run_training

    config = write_config(tmp_path, custom_model)  # template unset: nothing detects "### Q", so auto
    run_training(prepare(config, [], manager=PluginManager(autoload=False)))
    adapter = tmp_path / "out"
    assert AutoTokenizer.from_pretrained(adapter).chat_template == CUSTOM
    engine = engine_for(prepare(None, [f"model_name_or_path={custom_model}", f"adapter_name_or_path={adapter}",
                                       "finetuning_type=lora", "template=auto", "do_sample=false", "max_new_tokens=4"],
                                manager=PluginManager(autoload=False), inference=True))
    assert engine.template.name == "auto"
    ids = engine.template.encode_prompt(engine.tokenizer, [{"role": "user", "content": "What is 1 plus 1?"}])
    assert engine.tokenizer.decode(ids) == "### Q\nWhat is 1 plus 1?\n### A\n"
    assert isinstance(engine.generate([{"role": "user", "content": "What is 1 plus 1?"}])[0].text, str)
    export = tmp_path / "merged"
    result = run_cli("export", write_config(tmp_path, custom_model, template="auto", adapter_name_or_path=adapter,
                                            export_dir=export))
    assert result.returncode == 0, result.stderr[-3000:]
    assert AutoTokenizer.from_pretrained(export).chat_template == CUSTOM


# ------------------------------------------------------------------ preserve_thinking (reasoning templates)

THOUGHTFUL = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"},
    {"role": "user", "content": "What is 2+2?"},
]


def test_preserve_thinking_keeps_past_reasoning_in_builtin_and_exported_templates(tokenizers):
    import dataclasses

    tokenizer = tokenizers["qwen3"]
    qwen3 = Template.from_definition("qwen3", _definitions()["qwen3"])
    dropped = qwen3.render_prompt(tokenizer, THOUGHTFUL)
    assert "Greet back." not in dropped and "<|im_start|>assistant\nHello!<|im_end|>" in dropped
    kept = dataclasses.replace(qwen3, preserve_thinking=True)
    prompt = kept.render_prompt(tokenizer, THOUGHTFUL)
    assert "<|im_start|>assistant\n<think>\nGreet back.\n</think>\n\nHello!<|im_end|>" in prompt
    # as history of a trained reply (mask_history): the thought stays, untrained
    ids, labels = kept.encode_supervised(tokenizer, THOUGHTFUL + [{"role": "assistant", "content": "4."}], mask_history=True)
    assert "Greet back." in tokenizer.decode(ids)
    assert trained_text(tokenizer, ids, labels) == ["<think>\n\n</think>\n\n4.<|im_end|>\n"]
    # the Jinja written into the saved tokenizer renders the same, and honours the variable at inference
    for template, expected in ((qwen3, dropped), (kept, prompt)):
        tokenizer_copy = AutoTokenizer.from_pretrained(cached_tiny_model("qwen3"))
        template.apply_to_tokenizer(tokenizer_copy)
        assert tokenizer_copy.apply_chat_template(THOUGHTFUL, tokenize=False) == expected
    assert tokenizer_copy.apply_chat_template(THOUGHTFUL, tokenize=False, preserve_thinking=False) == dropped


def test_preserve_thinking_is_a_config_key(tokenizers):
    from tuneforge.plan import prepare
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.train.context import RunContext
    from tuneforge.train.model import resolve_template

    def resolved(*extra):
        prepared = prepare(None, [f"model_name_or_path={cached_tiny_model('qwen3')}", *extra], manager=PluginManager(autoload=False))
        return resolve_template(RunContext(prepared.config, prepared.plan, prepared.manager), tokenizers["qwen3"])

    assert resolved("template=qwen3").preserve_thinking is False
    assert resolved("template=qwen3", "preserve_thinking=true").preserve_thinking is True
    assert resolved("template=auto", "preserve_thinking=true").preserve_thinking is True


def test_tool_calls_the_model_writes_are_parsed_back_through_the_templates_own_format(tokenizers):
    from tuneforge.chat.tools import parse_tool_calls

    for family, reply in (("qwen2", '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>'),
                          ("qwen3", '<think>\nAdd them.\n</think>\n\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>'),
                          ("mistral", '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1}}]')):
        tokenizer = tokenizers[family]
        template = TokenizerTemplate.from_tokenizer(tokenizer)
        parsed = parse_tool_calls(template, reply, tokenizer)
        assert parsed is not None and parsed[1] == [{"name": "add", "arguments": {"a": 1}}], family
        assert parse_tool_calls(template, "Just text.", tokenizer) is None
    # a template without tool calls: nothing is ever parsed as one, not even LLaMA-Factory's "Action:" format
    template = TokenizerTemplate.from_tokenizer(tokenizers["llama3"])
    assert parse_tool_calls(template, 'Action: add\nAction Input: {"a": 1}', tokenizers["llama3"]) is None


def test_data_counts_the_rows_a_history_rewriting_template_trains_only_last(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
                               {"from": "human", "value": "And?"}, {"from": "gpt", "value": "Bye."}]},
            {"conversations": [{"from": "human", "value": "One turn"}, {"from": "gpt", "value": "Only."}]}]
    (tmp_path / "chats.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"chats": {"file_name": "chats.json", "formatting": "sharegpt"}}))
    config = tmp_path / "c.yaml"
    config.write_text(f"model_name_or_path: {cached_tiny_model('qwen3')}\ntemplate: auto\ndataset: chats\n"
                      f"dataset_dir: {tmp_path}\noutput_dir: {tmp_path / 'out'}\ncutoff_len: 128\n")
    result = run_cli("data", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "template auto: the tokenizer's own chat template; replies found by rendering turn by turn" in result.stdout
    assert "1 row(s): the chat template renders earlier turns differently" in result.stdout
    # the example: the first row, only its last reply trained
    assert "[[<think>\n\n</think>\n\nBye.<|im_end|>\n]]" in result.stdout and "[[Hello!" not in result.stdout
