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


# XML / special tool formats: tool_format -> (a piece the tools text in the system prompt must hold, the call as
# the model writes it). Written from each model's chat format: Qwen3.5's published chat_template.jinja (also
# compared token for token in tests/test_template_catalogue.py), GLM-4.5's, Seed-OSS's, MiniMax-M1/M2's, LFM2's.
XML_CALLS = {
    "qwen3_5": ("<tools>\n" + json.dumps({"type": "function", "function": json.loads(TOOLS)[0]}) + "\n</tools>",
                "<tool_call>\n<function=add>\n<parameter=a>\n1\n</parameter>\n<parameter=b>\n2\n</parameter>\n</function>\n</tool_call>"),
    "glm4_moe": ("<tools>\n" + json.dumps({"type": "function", "function": json.loads(TOOLS)[0]}) + "\n</tools>",
                 "<tool_call>add\n<arg_key>a</arg_key>\n<arg_value>1</arg_value>\n<arg_key>b</arg_key>\n<arg_value>2</arg_value>\n</tool_call>"),
    "seed_oss": ("\n[" + json.dumps(json.loads(TOOLS)[0]) + "]\n",
                 "<seed:tool_call>\n<function=add>\n<parameter=a>1</parameter>\n<parameter=b>2</parameter>\n</function>\n</seed:tool_call>"),
    "minimax1": ("<tools>\n" + json.dumps(json.loads(TOOLS)[0]) + "\n</tools>",
                 '<tool_calls>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_calls>'),
    "minimax2": ("<tools>\n<tool>" + json.dumps(json.loads(TOOLS)[0]) + "</tool>\n</tools>",
                 '\n<minimax:tool_call>\n<invoke name="add">\n<parameter name="a">1</parameter>\n<parameter name="b">2</parameter>\n'
                 "</invoke>\n</minimax:tool_call>"),
    "lfm2": ("List of tools: <|tool_list_start|>[" + json.dumps({"type": "function", "function": json.loads(TOOLS)[0]}) + "]<|tool_list_end|>",
             "<|tool_call_start|>[add(a=1, b=2)]<|tool_call_end|>"),
}


@pytest.mark.parametrize("tool_format", sorted(XML_CALLS))
def test_xml_tool_formats_write_offer_and_parse_back(tool_format, tokenizer):
    """A call and a result in each model's own tool format (tool_format on chatml), the call parsed back."""
    from tuneforge.chat.tools import parse_tool_calls

    tools_piece, call = XML_CALLS[tool_format]
    template = template_for(tool_format=tool_format)
    (prompt, reply), (result_prompt, answer) = template.render_turns(tokenizer, MESSAGES, "Be exact.", tools=TOOLS)
    assert tools_piece in prompt and "Be exact." in prompt
    assert reply == call + "<|im_end|>\n"
    assert result_prompt == "<|im_start|>tool\n3<|im_end|>\n<|im_start|>assistant\n"
    assert answer == "3.<|im_end|>\n"
    content, calls = parse_tool_calls(template, call, tokenizer)
    assert content == "" and calls == [{"name": "add", "arguments": {"a": 1, "b": 2}}]
    # the saved tokenizer's Jinja writes a Hugging Face tool call the same way
    tokenizer = AutoTokenizer.from_pretrained(cached_tiny_model("qwen2"))
    template.apply_to_tokenizer(tokenizer)
    hf = [{"role": "user", "content": "1+2?"},
          {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},
          {"role": "tool", "content": "3"}]
    rendered = tokenizer.apply_chat_template(hf, tools=[json.loads(TOOLS)[0]], tokenize=False, add_generation_prompt=True)
    assert rendered == template.render_prompt(tokenizer, MESSAGES[:3], None, tools=TOOLS)


def test_tools_before_the_system_prompt_as_qwen3_5_and_glm4_5(tokenizer):
    (prompt, _), _ = template_for(tool_format="qwen3_5").render_turns(tokenizer, MESSAGES, "Be exact.", tools=TOOLS)
    assert prompt.startswith("<|im_start|>system\n# Tools\n\n") and prompt.index("</IMPORTANT>\n\nBe exact.<|im_end|>") > 0
    (prompt, _), _ = template_for(template="glm4_moe").render_turns(tokenizer, MESSAGES, "Be exact.", tools=TOOLS)
    assert prompt.startswith("[gMASK]<sop><|system|>\n# Tools\n\n") and "...\n</tool_call><|system|>\nBe exact.<|user|>" in prompt


def test_a_string_argument_is_written_as_is_and_a_list_as_json(tokenizer):
    messages = [MESSAGES[0], {"role": "function", "content": json.dumps({"name": "f", "arguments": {"s": "a b", "l": [1, 2]}})}]
    [(_, reply)] = template_for(tool_format="qwen3_5").render_turns(tokenizer, messages)
    assert "<parameter=s>\na b\n</parameter>\n<parameter=l>\n[1, 2]\n</parameter>\n" in reply
    [(_, reply)] = template_for(tool_format="lfm2").render_turns(tokenizer, messages)
    assert reply.startswith('<|tool_call_start|>[f(s="a b", l=[1, 2])]<|tool_call_end|>')
    bad = [MESSAGES[0], {"role": "function", "content": json.dumps({"name": "f", "arguments": [1]})}]
    with pytest.raises(ValueError, match="writes each argument of a call; the arguments of 'f' must be an object"):
        template_for(tool_format="qwen3_5").render_turns(tokenizer, bad)


def test_glm4_7_renders_tools_a_call_and_a_result_as_its_chat_template(tokenizer):
    """GLM-4.7's published template, as rendered by an independent implementation (Ollama's glm47 renderer test):
    tools, a call and a result. Two differences are LLaMA-Factory's policy, not the format: a history reply here has no
    thought marker (the template writes a bare ``</think>``), and the prompt stops before ``<think>``."""
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Get weather", "parameters": {
        "type": "object", "required": ["location"], "properties": {"location": {"type": "string"}}}}}]
    published = (
        "[gMASK]<sop><|system|>\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are "
        "provided with function signatures within <tools></tools> XML tags:\n<tools>\n" + json.dumps(tools[0]) + "\n</tools>\n\n"
        "For each function call, output the function name and arguments within the following XML format:\n<tool_call>"
        "{function-name}<arg_key>{arg-key-1}</arg_key><arg_value>{arg-value-1}</arg_value><arg_key>{arg-key-2}</arg_key>"
        "<arg_value>{arg-value-2}</arg_value>...</tool_call><|user|>Weather?<|assistant|></think><tool_call>get_weather"
        "<arg_key>location</arg_key><arg_value>Tokyo</arg_value><arg_key>unit</arg_key><arg_value>celsius</arg_value>"
        '</tool_call><|observation|><tool_response>{"temperature":22}</tool_response><|assistant|><think>')
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "function", "content": json.dumps({"name": "get_weather", "arguments": {"location": "Tokyo", "unit": "celsius"}})},
                {"role": "observation", "content": '{"temperature":22}'}]
    template = template_for(template="glm4_7")
    expected = published.replace("<|assistant|></think>", "<|assistant|>").removesuffix("<think>")
    assert template.render_prompt(tokenizer, messages, None, tools=json.dumps(tools)) == expected
    from tuneforge.chat.tools import parse_tool_calls

    call = "<tool_call>get_weather<arg_key>location</arg_key><arg_value>Tokyo</arg_value></tool_call><tool_call>f</tool_call>"
    assert parse_tool_calls(template, call, tokenizer)[1] == [{"name": "get_weather", "arguments": {"location": "Tokyo"}},
                                                              {"name": "f", "arguments": {}}]


def test_ling_is_llamafactorys_name_for_bailing_v2s_tool_format(tokenizer):
    """tool_format: ling (LLaMA-Factory's value) passes check and writes bailing_v2's tools, call and result."""
    from tuneforge.chat.tools import parse_tool_calls

    ling, bailing = template_for(tool_format="ling"), template_for(tool_format="bailing_v2")
    turns = ling.render_turns(tokenizer, MESSAGES, "Be exact.", tools=TOOLS)
    assert turns == bailing.render_turns(tokenizer, MESSAGES, "Be exact.", tools=TOOLS)
    (prompt, reply), (result_prompt, answer) = turns
    assert prompt.startswith("<|im_start|>system\nBe exact.\n\n# Tools\n\n") and prompt.count("detailed thinking off<|im_end|>") == 1
    assert reply == '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>\n'
    assert result_prompt == "<|im_start|>tool\n3<|im_end|>\n<|im_start|>assistant\n" and answer == "3.<|im_end|>\n"
    assert parse_tool_calls(ling, reply.removesuffix("<|im_end|>\n"), tokenizer)[1] == [{"name": "add", "arguments": {"a": 1, "b": 2}}]
    with pytest.raises(ConfigError, match="unknown tool_format 'lign'"):
        template_for(tool_format="lign")


def test_every_llamafactory_tool_format_value_passes_check():
    """LLaMA-Factory 0.9.5's tool_format values (the names of data/tool_utils.py's TOOLS table)."""
    for value in ("default", "gemma4", "glm4", "llama3", "lfm2", "minimax1", "minimax2", "mistral", "qwen", "qwen3_5",
                  "glm4_moe", "seed_oss", "ling"):
        assert template_for(tool_format=value).name == "chatml", value


# gpt-oss (harmony): tools in a developer message as a TypeScript-like namespace, a call on the commentary channel to
# functions.NAME ending with <|call|>, its result from functions.NAME back to the assistant. Written from gpt-oss's
# published chat_template.jinja (tool rendering) and the harmony format docs (the call as the model writes it).
HARMONY_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Gets the weather.", "parameters": {
    "type": "object", "required": ["location"], "properties": {
        "location": {"type": "string", "description": "The city, e.g. Paris"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
        "days": {"type": "integer", "default": 3},
        "tags": {"type": "array", "items": {"type": "string"}},
        "either": {"type": ["string", "number"]},
        "note": {"type": "string", "nullable": True}}}}},
    {"type": "function", "function": {"name": "now", "description": "The time.", "parameters": {"type": "object", "properties": {}}}}]
HARMONY_DEVELOPER = (
    "<|start|>developer<|message|># Tools\n\n## functions\n\nnamespace functions {\n\n"
    "// Gets the weather.\ntype get_weather = (_: {\n// The city, e.g. Paris\nlocation: string,\n"
    'unit?: "celsius" | "fahrenheit", // default: celsius,\ndays?: number, // default: 3,\ntags?: string[],\n'
    "either?: string | number,\nnote?: string | null,\n}) => any;\n\n"
    "// The time.\ntype now = () => any;\n\n} // namespace functions<|end|>")
HARMONY_CALL = '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"location": "Paris"}<|call|>'
HARMONY_RESULT = '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"temp": 20}<|end|><|start|>assistant'
HARMONY_SPECIALS = ["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|call|>", "<|return|>"]


def test_gpt_oss_writes_tools_a_call_and_a_result_in_harmony_format():
    from tuneforge.chat.tools import parse_tool_calls
    from tuneforge.data.template import IGNORE_INDEX

    tokenizer = AutoTokenizer.from_pretrained(cached_tiny_model("qwen2"))
    tokenizer.add_special_tokens({"additional_special_tokens": HARMONY_SPECIALS})
    template = template_for(template="gpt_oss")
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "function", "content": json.dumps({"name": "get_weather", "arguments": {"location": "Paris"}})},
                {"role": "observation", "content": '{"temp": 20}'},
                {"role": "assistant", "content": "20 degrees."}]
    (prompt, reply), (result_prompt, answer) = template.render_turns(tokenizer, messages, "Be exact.", tools=json.dumps(HARMONY_TOOLS))
    assert prompt == ("<|start|>system<|message|>Be exact.<|end|>" + HARMONY_DEVELOPER
                      + "<|start|>user<|message|>Weather?<|end|><|start|>assistant")
    assert reply == HARMONY_CALL  # no empty analysis/final block in front of a call: it goes on the commentary channel
    assert result_prompt == HARMONY_RESULT
    assert answer == "<|channel|>analysis<|message|><|end|><|start|>assistant<|channel|>final<|message|>20 degrees.<|end|>"
    # token for token: each harmony marker is one token, and the call is exactly the trained tokens
    ids, labels = template.encode_supervised(tokenizer, messages, "Be exact.", tools=json.dumps(HARMONY_TOOLS))
    special = {t: tokenizer.convert_tokens_to_ids(t) for t in HARMONY_SPECIALS}
    call_ids = ([special["<|channel|>"]] + tokenizer.encode("commentary to=functions.get_weather ", add_special_tokens=False)
                + [special["<|constrain|>"]] + tokenizer.encode("json", add_special_tokens=False) + [special["<|message|>"]]
                + tokenizer.encode('{"location": "Paris"}', add_special_tokens=False) + [special["<|call|>"]])
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    assert ids[len(prompt_ids): len(prompt_ids) + len(call_ids)] == call_ids
    assert labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert labels[len(prompt_ids): len(prompt_ids) + len(call_ids)] == call_ids
    result_ids = tokenizer.encode(HARMONY_RESULT, add_special_tokens=False)
    assert ids[len(prompt_ids) + len(call_ids): len(prompt_ids) + len(call_ids) + len(result_ids)] == result_ids
    # efficient_eos: the first result token's label is the EOS (the model stops after <|call|>), the rest are masked
    assert labels[len(prompt_ids) + len(call_ids)] == tokenizer.eos_token_id
    assert set(labels[len(prompt_ids) + len(call_ids) + 1: len(prompt_ids) + len(call_ids) + len(result_ids)]) == {IGNORE_INDEX}
    # a reply with its analysis first, as the model generates it, is parsed back
    generated = "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant" + HARMONY_CALL
    assert parse_tool_calls(template, generated, tokenizer) == (
        "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant", [{"name": "get_weather", "arguments": {"location": "Paris"}}])
    assert parse_tool_calls(template, "<|channel|>final<|message|>Hi.", tokenizer) is None
    # a function turn that carries its thought keeps it, closed the way a call follows it
    thought = "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>final<|message|>"
    [(_, reply)] = template.render_turns(tokenizer, [messages[0], {"role": "function", "content": thought + messages[1]["content"]}])
    assert reply == generated
    # the saved tokenizer's Jinja renders a Hugging Face tool call and its result the same way
    template.apply_to_tokenizer(tokenizer)
    hf = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Weather?"},
          {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"location": "Paris"}}}]},
          {"role": "tool", "content": '{"temp": 20}'}]
    rendered = tokenizer.apply_chat_template(hf, tools=HARMONY_TOOLS, tokenize=False, add_generation_prompt=True)
    assert rendered == prompt + HARMONY_CALL + HARMONY_RESULT


def test_gpt_oss_a_tool_result_needs_its_call_and_calls_are_one_per_turn(tokenizer):
    template = template_for(template="gpt_oss")
    with pytest.raises(ValueError, match="names the tool in a tool result; put the function"):
        template.render_turns(tokenizer, [{"role": "observation", "content": "3"}, {"role": "assistant", "content": "3."}])
    two = json.dumps([{"name": "add", "arguments": {}}, {"name": "now", "arguments": {}}])
    with pytest.raises(ValueError, match="one tool call per turn"):
        template.render_turns(tokenizer, [MESSAGES[0], {"role": "function", "content": two}])


# Gemma 4: <|tool>declaration:NAME{...}<tool|> items after the system text (each parameter written with its description,
# enum, items, nullable, properties, required and upper-case type, sorted by name), calls as <|tool_call>call:NAME{...}
# <tool_call|> ended by <|tool_response>, the result in the same model turn. Written from Gemma 4's published chat template.
GEMMA4_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Gets the weather.", "parameters": {
    "type": "object", "required": ["location"], "properties": {
        "location": {"type": "string", "description": "The city, e.g. Paris"},
        "Unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "nullable": True},
        "points": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
        "opts": {"type": "object", "properties": {"deep": {"type": "boolean"}}, "required": ["deep"]}}}}},
    {"type": "function", "function": {"name": "now", "description": "The time."}}]
GEMMA4_DECLARATIONS = (
    '<|tool>declaration:get_weather{description:<|"|>Gets the weather.<|"|>,parameters:{properties:{'
    'days:{nullable:true,type:<|"|>INTEGER<|"|>},'
    'location:{description:<|"|>The city, e.g. Paris<|"|>,type:<|"|>STRING<|"|>},'
    'opts:{properties:{deep:{type:<|"|>BOOLEAN<|"|>}},required:[<|"|>deep<|"|>],type:<|"|>OBJECT<|"|>},'
    'points:{items:{properties:{x:{type:<|"|>NUMBER<|"|>}},required:[<|"|>x<|"|>],type:<|"|>OBJECT<|"|>},type:<|"|>ARRAY<|"|>},'
    'Unit:{enum:[<|"|>celsius<|"|>,<|"|>fahrenheit<|"|>],type:<|"|>STRING<|"|>}},'
    'required:[<|"|>location<|"|>],type:<|"|>OBJECT<|"|>}}<tool|>'
    '<|tool>declaration:now{description:<|"|>The time.<|"|>}<tool|>')
GEMMA4_ARGUMENTS = {"location": "Paris, FR", "days": 3, "Unit": "celsius", "opts": {"deep": True, "Alpha": [1, "x"]}}
GEMMA4_CALL = ('<|tool_call>call:get_weather{days:3,location:<|"|>Paris, FR<|"|>,opts:{Alpha:[1,<|"|>x<|"|>],deep:true},'
               'Unit:<|"|>celsius<|"|>}<tool_call|><|tool_response>')
GEMMA4_RESULT = 'response:get_weather{value:<|"|>{"t": 20}<|"|>}<tool_response|>'


@pytest.mark.parametrize("name", ["gemma4", "gemma4n"])
def test_gemma4_writes_declarations_a_call_and_a_result_as_its_chat_template(name, tokenizer):
    from tuneforge.chat.tools import parse_tool_calls
    from tuneforge.data.template import IGNORE_INDEX

    template = template_for(template=name)
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "function", "content": json.dumps({"name": "get_weather", "arguments": GEMMA4_ARGUMENTS})},
                {"role": "observation", "content": '{"t": 20}'},
                {"role": "assistant", "content": "Warm."}]
    (prompt, reply), (result_prompt, answer) = template.render_turns(tokenizer, messages, "Be exact.", tools=json.dumps(GEMMA4_TOOLS))
    assert prompt == ("<|turn>system\n<|think|>\nBe exact." + GEMMA4_DECLARATIONS + "<turn|>\n"
                      "<|turn>user\nWeather?<turn|>\n<|turn>model\n")
    assert reply == GEMMA4_CALL  # no empty thought block in front of a call; <|tool_response> ends it (a stop word)
    assert result_prompt == GEMMA4_RESULT and answer == "<|channel>thought\n<channel|>Warm.<turn|>\n"
    assert "<|tool_response>" in template.stop_words
    # ids and labels: the call (with its closing <|tool_response>) is trained, the result is not
    ids, labels = template.encode_supervised(tokenizer, messages, "Be exact.", tools=json.dumps(GEMMA4_TOOLS))
    prompt_ids, call_ids = (tokenizer.encode(t, add_special_tokens=False) for t in (prompt, reply))
    result_ids = tokenizer.encode(result_prompt, add_special_tokens=False)
    assert ids[: len(prompt_ids) + len(call_ids) + len(result_ids)] == prompt_ids + call_ids + result_ids
    assert labels[: len(prompt_ids) + len(call_ids) + len(result_ids)] == (
        [IGNORE_INDEX] * len(prompt_ids) + call_ids + [IGNORE_INDEX] * len(result_ids))
    # parsed back: argument values keep their types, strings with commas included
    assert parse_tool_calls(template, GEMMA4_CALL.removesuffix("<|tool_response>"), tokenizer) == (
        "", [{"name": "get_weather", "arguments": {"days": 3, "location": "Paris, FR", "opts": {"Alpha": [1, "x"], "deep": True},
                                                   "Unit": "celsius"}}])
    # the saved tokenizer's Jinja renders a Hugging Face tool call and its result the same way
    tokenizer = AutoTokenizer.from_pretrained(cached_tiny_model("qwen2"))
    template.apply_to_tokenizer(tokenizer)
    hf = [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "Weather?"},
          {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": GEMMA4_ARGUMENTS}}]},
          {"role": "tool", "content": '{"t": 20}'}]
    rendered = tokenizer.apply_chat_template(hf, tools=GEMMA4_TOOLS, tokenize=False, add_generation_prompt=True)
    assert rendered == prompt + GEMMA4_CALL + GEMMA4_RESULT


def test_gemma4_tool_loop_equals_an_independent_rendering_of_its_published_template(tokenizer):
    """Gemma 4's pinned template as rendered by an independent implementation (a C++ inference frontend's test): tools,
    a call and its result. Two differences are LLaMA-Factory's gemma4 policy, not the tool format: a default system
    prompt when none is given (here one is given), and the prompt not opening a thought block."""
    published = ('<bos><|turn>system\n<|think|>\n<|tool>declaration:weather{description:<|"|>Weather<|"|>,parameters:{'
                 'properties:{city:{description:<|"|>City<|"|>,type:<|"|>STRING<|"|>}},required:[<|"|>city<|"|>],'
                 'type:<|"|>OBJECT<|"|>}}<tool|><turn|>\n<|turn>user\nPlan<turn|>\n<|turn>model\n'
                 '<|tool_call>call:weather{city:<|"|>Paris<|"|>}<tool_call|><|tool_response>response:weather{value:<|"|>sunny<|"|>}'
                 '<tool_response|><|channel>thought\n')
    tools = [{"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "description": "City"}}, "required": ["city"]}}}]
    messages = [{"role": "user", "content": "Plan"},
                {"role": "function", "content": json.dumps({"name": "weather", "arguments": {"city": "Paris"}})},
                {"role": "observation", "content": "sunny"}]
    ours = template_for(template="gemma4").render_prompt(tokenizer, messages, "Be exact.", tools=json.dumps(tools))
    assert ours == published.replace("<bos>", "").replace("<|think|>\n", "<|think|>\nBe exact.").removesuffix("<|channel>thought\n")
