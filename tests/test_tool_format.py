"""``tool_format``: the tool format of another template (LLaMA-Factory's key), each tested on a call and a result.

LLaMA-Factory's tool_format values are named like its templates (default, glm4, llama3, mistral, qwen):
``tool_format: NAME`` keeps the selected template's turns and takes how tools are offered and how calls
are written from template NAME. The tool result goes in the selected template's observation slot.
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tuneforge.errors import ConfigError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager
from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model
from tuneforge.train.context import RunContext
from tuneforge.train.model import resolve_template

TOOLS = json.dumps([{"name": "add", "description": "Add.", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}])
MESSAGES = [
    {"role": "user", "content": "1+2?"},
    {"role": "function", "content": json.dumps({"name": "add", "arguments": {"a": 1, "b": 2}})},
    {"role": "observation", "content": "3"},
    {"role": "assistant", "content": "3."},
]
QWEN_TOOLS = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function "
    "signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "add", "description": "Add.", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}'
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)
# tool_format -> (the tools text in the system prompt, the call as the reply writes it), with template chatml
EXPECTED = {
    "qwen": (QWEN_TOOLS, '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>\n'),
    "default": (
        "You have access to the following tools:\n> Tool Name: add\nTool Description: Add.\nTool Args: "
        '{"type": "object", "properties": {"a": {"type": "integer"}}}\n'
        "Use the following format if using a tool:\n```\nAction: tool name (one of [add])\nAction Input: the input to the tool, "
        'in a JSON format representing the kwargs (e.g. ```{"input": "hello world", "num_beams": 5}```)\n```\n',
        'Action: add\nAction Input: {"a": 1, "b": 2}<|im_end|>\n'),
    "llama3": (
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou have access to the following functions. To call "
        'a function, please respond with JSON for a function call. Respond in the format {"name": function name, "parameters": '
        "dictionary of argument name and its value}. Do not use variables.\n\n"
        + json.dumps({"type": "function", "function": json.loads(TOOLS)[0]}, indent=4) + "\n\n",
        '{"name": "add", "parameters": {"a": 1, "b": 2}}<|im_end|>\n'),
    "mistral": (
        "[AVAILABLE_TOOLS] [" + json.dumps({"type": "function", "function": json.loads(TOOLS)[0]}) + "][/AVAILABLE_TOOLS]",
        '[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1, "b": 2}}]<|im_end|>\n'),
    "glm4": (
        "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，你的任务是针对用户的问题和要求提供适当的答复和支持。"
        "# 可用工具\n\n## add\n\n" + json.dumps(json.loads(TOOLS)[0], indent=4) + "\n在调用上述函数时，请使用 Json 格式表示调用的参数。",
        'add\n{"a": 1, "b": 2}<|im_end|>\n'),
}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(cached_tiny_model("qwen2"))


def template_for(**values):
    values = {"model_name_or_path": str(cached_tiny_model("qwen2")), "template": "chatml", **values}
    prepared = prepare(None, [f"{k}={v}" for k, v in values.items()], manager=PluginManager(autoload=False))
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager)
    return resolve_template(ctx, AutoTokenizer.from_pretrained(cached_tiny_model("qwen2")))


@pytest.mark.parametrize("tool_format", sorted(EXPECTED))
def test_tool_format_writes_the_call_and_offers_the_tools_in_its_format(tool_format, tokenizer):
    tools_text, call = EXPECTED[tool_format]
    template = template_for(tool_format=tool_format)
    (prompt, reply), (result_prompt, answer) = template.render_turns(tokenizer, MESSAGES, "Be exact.", tools=TOOLS)
    separator = "" if tool_format == "glm4" else "\n\n"
    assert prompt == f"<|im_start|>system\nBe exact.{separator}{tools_text}<|im_end|>\n<|im_start|>user\n1+2?<|im_end|>\n<|im_start|>assistant\n"
    assert reply == call
    # the result goes in the selected template's (chatml's) tool turn, whatever the tool format
    assert result_prompt == "<|im_start|>tool\n3<|im_end|>\n<|im_start|>assistant\n"
    assert answer == "3.<|im_end|>\n"
    # the rest of the template is chatml's
    assert template.name == "chatml" and template.stop_words == ("<|im_end|>", "<|im_start|>")


def test_without_tool_format_chatml_uses_the_generic_format(tokenizer):
    (_, reply), _ = template_for().render_turns(tokenizer, MESSAGES, "Be exact.", tools=TOOLS)
    assert reply == EXPECTED["default"][1]


def test_a_tool_format_is_parsed_back_from_a_generated_reply(tokenizer):
    from tuneforge.chat.tools import parse_tool_calls

    for tool_format in ("qwen", "llama3", "mistral"):
        template = template_for(tool_format=tool_format)
        text = EXPECTED[tool_format][1].removesuffix("<|im_end|>\n")
        parsed = parse_tool_calls(template, text, tokenizer)
        assert parsed is not None, tool_format
        _, calls = parsed
        arguments = [c["arguments"] if isinstance(c["arguments"], dict) else json.loads(c["arguments"]) for c in calls]
        assert [c["name"] for c in calls] == ["add"] and arguments == [{"a": 1, "b": 2}], tool_format


def test_bad_tool_formats_are_config_errors():
    with pytest.raises(ConfigError, match="unknown tool_format 'qwne'.*qwen"):
        template_for(tool_format="qwne")
    with pytest.raises(ConfigError, match="'auto' is not a tool format"):
        template_for(tool_format="auto")
    with pytest.raises(ConfigError, match="renders tools with the tokenizer's own chat template"):
        template_for(template="auto", tool_format="qwen")
