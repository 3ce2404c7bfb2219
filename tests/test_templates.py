"""Chat templates: exact pieces, ids and label masks for every template; our prompt equals each tiny
family's own Jinja rendering; tool calls; thinking; truncation; the Jinja we write; detection."""

from __future__ import annotations

import json

import pytest

from tuneforge.data.template import IGNORE_INDEX, Template, split_budget
from tuneforge.errors import TuneforgeError
from tuneforge.plugins.templates.builtin import _definitions, detect_template, tuneforge_detect_template
from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

SYSTEM = "Be brief."
MESSAGES = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
]

B, E = "<|begin_of_text|>", "<|eot_id|>"  # the tiny llama3 tokenizer's bos and eos
CHATML = [
    ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "Hello!<|im_end|>\n"),
    ("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n", "4.<|im_end|>\n"),
]
GEMMA = [
    (B + "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n", "Hello!<end_of_turn>\n"),
    ("<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n", "4.<end_of_turn>\n"),
]
THINK = "<think>\n\n</think>\n\n"

# template -> (eos policy, [(prompt text, response text) per exchange]) for SYSTEM + MESSAGES, rendered
# with the tiny llama3 tokenizer. "append": the EOS id follows each response; "efficient": the EOS is
# a label only (first token of the next prompt) plus one real EOS at the end; "none": the slot ends it.
EXPECTED = {
    "default": ("none", [
        ("System: Be brief.<|eot_id|>\nHuman: Hi<|eot_id|>\nAssistant:", "Hello!<|eot_id|>\n"),
        ("Human: What is 2+2?<|eot_id|>\nAssistant:", "4.<|eot_id|>\n"),
    ]),
    "empty": ("none", [("Be brief.Hi", "Hello!"), ("What is 2+2?", "4.")]),
    "alpaca": ("none", [
        ("Be brief.### Instruction:\nHi\n\n### Response:\n", "Hello!<|eot_id|>\n\n"),
        ("### Instruction:\nWhat is 2+2?\n\n### Response:\n", "4.<|eot_id|>\n\n"),
    ]),
    "vicuna": ("append", [("Be brief. USER: Hi ASSISTANT:", "Hello!"), ("USER: What is 2+2? ASSISTANT:", "4.")]),
    "chatml": ("none", CHATML),
    "llama2": ("append", [
        (B + "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]", "Hello!"),
        (B + "[INST] What is 2+2? [/INST]", "4."),
    ]),
    "llama3": ("none", [
        (B + "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
         "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
         "Hello!<|eot_id|>"),
        ("<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
         "4.<|eot_id|>"),
    ]),
    "qwen": ("none", CHATML),
    "qwen3": ("none", [(CHATML[0][0], THINK + CHATML[0][1]), (CHATML[1][0], THINK + CHATML[1][1])]),
    "qwen3_nothink": ("none", CHATML),
    "mistral": ("append", [(B + "[INST] Be brief.\n\nHi[/INST]", " Hello!"), ("[INST] What is 2+2?[/INST]", " 4.")]),
    "gemma": ("none", GEMMA),
    "gemma3": ("none", GEMMA),
    "glm4": ("efficient", [
        ("[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi<|assistant|>", "\nHello!"),
        ("<|user|>\nWhat is 2+2?<|assistant|>", "\n4."),
    ]),
    "phi": ("none", [
        ("<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n", "Hello!<|end|>\n"),
        ("<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n", "4.<|end|>\n"),
    ]),
    "phi4": ("none", [
        ("<|im_start|>system<|im_sep|>Be brief.<|im_end|><|im_start|>user<|im_sep|>Hi<|im_end|>"
         "<|im_start|>assistant<|im_sep|>", "Hello!<|im_end|>"),
        ("<|im_start|>user<|im_sep|>What is 2+2?<|im_end|><|im_start|>assistant<|im_sep|>", "4.<|im_end|>"),
    ]),
    "deepseek": ("append", [(B + "Be brief.\n\nUser: Hi\n\nAssistant:", " Hello!"), ("User: What is 2+2?\n\nAssistant:", " 4.")]),
    "deepseek3": ("append", [(B + "Be brief.<｜User｜>Hi<｜Assistant｜>", "Hello!"), ("<｜User｜>What is 2+2?<｜Assistant｜>", "4.")]),
    "yi": ("none", CHATML),
    "zephyr": ("append", [
        ("<|system|>\nBe brief.<|eot_id|><|user|>\nHi<|eot_id|><|assistant|>\n", "Hello!"),
        ("<|user|>\nWhat is 2+2?<|eot_id|><|assistant|>\n", "4."),
    ]),
    "baichuan2": ("efficient", [("Be brief.<reserved_106>Hi<reserved_107>", "Hello!"), ("<reserved_106>What is 2+2?<reserved_107>", "4.")]),
    "intern2": ("none", [(B + CHATML[0][0], CHATML[0][1]), CHATML[1]]),
    "cohere": ("append", [
        (B + "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Be brief.<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi"
         "<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>", "Hello!"),
        ("<|START_OF_TURN_TOKEN|><|USER_TOKEN|>What is 2+2?<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>", "4."),
    ]),
    "falcon": ("efficient", [("Be brief.User: Hi\nFalcon:", "Hello!\n"), ("User: What is 2+2?\nFalcon:", "4.\n")]),
    "starchat": ("none", [
        ("<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>", "Hello!<|end|>\n"),
        ("<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>", "4.<|end|>\n"),
    ]),
    "openchat": ("append", [
        (B + "Be brief.GPT4 Correct User: Hi<|eot_id|>GPT4 Correct Assistant:", "Hello!"),
        ("GPT4 Correct User: What is 2+2?<|eot_id|>GPT4 Correct Assistant:", "4."),
    ]),
}

LLAMA_FACTORY_NAMES = {
    "default", "empty", "alpaca", "vicuna", "chatml", "llama2", "llama3", "qwen", "qwen3", "qwen3_nothink", "mistral",
    "gemma", "gemma3", "glm4", "phi", "phi4", "deepseek", "deepseek3", "yi", "zephyr", "baichuan2", "intern2", "cohere",
    "falcon", "starchat", "openchat",
}


@pytest.fixture(scope="module")
def tokenizers():
    from transformers import AutoTokenizer

    return {f: AutoTokenizer.from_pretrained(cached_tiny_model(f, "tiny")) for f in ("llama3", "qwen2", "qwen3", "mistral", "gemma")}


@pytest.fixture(scope="module")
def templates():
    return {name: Template.from_definition(name, d) for name, d in _definitions().items()}


def encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False)


def decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def test_the_shipped_templates_are_llamafactorys_names(templates):
    # the first 26; the rest of LLaMA-Factory's catalogue is tested in tests/test_template_catalogue.py
    assert LLAMA_FACTORY_NAMES == set(EXPECTED) and set(EXPECTED) <= set(templates)
    assert all(t.description for t in templates.values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_template_renders_exact_pieces_ids_and_labels(name, templates, tokenizers):
    tok, template = tokenizers["llama3"], templates[name]
    policy, pieces = EXPECTED[name]
    assert template.render_turns(tok, MESSAGES, SYSTEM) == pieces
    eos = tok.eos_token_id
    tail = [eos] if policy == "append" else []
    turns = template.encode_turns(tok, MESSAGES, SYSTEM)
    assert turns == [(encode(tok, p), encode(tok, r) + tail) for p, r in pieces]

    input_ids, labels = template.encode_supervised(tok, MESSAGES, SYSTEM, 2048, False)
    want_ids, want_labels = [], []
    for k, (p, r) in enumerate(pieces):
        prompt_labels = [IGNORE_INDEX] * len(encode(tok, p))
        if policy == "efficient" and k > 0:
            prompt_labels[0] = eos  # learn to stop after the previous answer, without an EOS between turns
        want_ids += encode(tok, p) + encode(tok, r) + tail
        want_labels += prompt_labels + encode(tok, r) + tail
    if policy == "efficient":
        want_ids.append(eos)
        want_labels.append(eos)
    assert (input_ids, labels) == (want_ids, want_labels)

    # mask_history trains only the last answer
    _, masked = template.encode_supervised(tok, MESSAGES, SYSTEM, 2048, mask_history=True)
    trained = [i for i, label in enumerate(masked) if label != IGNORE_INDEX]
    first_response = len(want_ids) - len(encode(tok, pieces[-1][1]) + tail) - (policy == "efficient")
    assert trained == list(range(first_response, len(want_ids)))
    if policy != "efficient":
        assert template.encode_supervised(tok, MESSAGES, SYSTEM, 2048, True)[1] == want_ids


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_our_jinja_renders_what_encode_prompt_encodes(name, templates, tokenizers):
    tok, template = tokenizers["llama3"], templates[name]
    hf = [{"role": "system", "content": SYSTEM}, *MESSAGES[:3]]
    for thinking in (True, False):
        ids = template.encode_prompt(tok, MESSAGES[:3], SYSTEM, enable_thinking=thinking)
        text = template.render_prompt(tok, MESSAGES[:3], SYSTEM, enable_thinking=thinking)
        assert decode(tok, ids) == text
        jinja = tok.apply_chat_template(hf, tokenize=False, add_generation_prompt=True, chat_template=template.to_jinja(),
                                        enable_thinking=thinking)
        assert jinja == text


# family -> our template, for each tiny model whose tokenizer ships its family's Jinja template
FAMILIES = {"llama3": "llama3", "qwen2": "qwen", "qwen3": "qwen3", "mistral": "mistral", "gemma": "gemma"}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("thinking", [True, False])
def test_our_prompt_equals_the_familys_own_chat_template(family, thinking, templates, tokenizers):
    tok, template = tokenizers[family], templates[FAMILIES[family]]
    messages = MESSAGES[:3]
    hf = [{"role": "system", "content": SYSTEM}, *messages]
    theirs = tok.apply_chat_template(hf, tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
    ours = template.render_prompt(tok, messages, SYSTEM, enable_thinking=thinking)
    assert ours == theirs
    assert decode(tok, template.encode_prompt(tok, messages, SYSTEM, enable_thinking=thinking)) == theirs
    joined = "".join(p + (r or "") + (tok.eos_token if r and template.append_eos else "") for p, r in
                     template.render_turns(tok, messages, SYSTEM, enable_thinking=thinking))
    if not template.reasoning:  # reasoning templates differ: SFT turns carry an empty thought block
        assert joined == theirs
    jinja = tok.apply_chat_template(hf, tokenize=False, add_generation_prompt=True, chat_template=template.to_jinja(),
                                    enable_thinking=thinking)
    assert jinja == theirs


def test_qwen3_history_drops_thoughts_as_the_real_template_does(templates, tokenizers):
    tok, template = tokenizers["qwen3"], templates["qwen3"]
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nA greeting.\n</think>\n\nHello!"},
                {"role": "user", "content": "What is 2+2?"}]
    for thinking in (True, False):
        theirs = tok.apply_chat_template([{"role": "system", "content": SYSTEM}, *messages], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=thinking)
        assert template.render_prompt(tok, messages, SYSTEM, enable_thinking=thinking) == theirs
        assert "A greeting" not in theirs


def test_qwen3_enable_thinking_false_puts_an_empty_block_in_the_prompt(templates, tokenizers):
    tok, template = tokenizers["llama3"], templates["qwen3"]
    messages = [*MESSAGES[:3], {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4."}]
    # thinking on: a response's own thoughts are kept and trained; a response without any gets an empty block
    on = template.render_turns(tok, messages, SYSTEM)
    assert on == [(CHATML[0][0], THINK + CHATML[0][1]), (CHATML[1][0], "<think>\nAdd them.\n</think>\n\n4.<|im_end|>\n")]
    # thinking off: thoughts are removed and the empty block moves to the (untrained) prompt
    off = template.render_turns(tok, messages, SYSTEM, enable_thinking=False)
    assert off == [(CHATML[0][0] + THINK, CHATML[0][1]), (CHATML[1][0] + THINK, CHATML[1][1])]
    ids, labels = template.encode_supervised(tok, messages, SYSTEM, enable_thinking=False)
    assert decode(tok, [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]) == "Hello!<|im_end|>\n4.<|im_end|>\n"
    # the nothink template never adds a block
    assert templates["qwen3_nothink"].render_turns(tok, MESSAGES, SYSTEM, enable_thinking=False) == CHATML
    assert templates["qwen3_nothink"].render_prompt(tok, MESSAGES[:3], SYSTEM, enable_thinking=False).endswith("assistant\n")


# --- tool calls -----------------------------------------------------------------------------------

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.",
                                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CALL = {"name": "get_weather", "arguments": {"city": "Beijing"}}
TOOL_MESSAGES = [
    {"role": "user", "content": "Weather in Beijing?"},
    {"role": "function", "content": json.dumps(CALL)},
    {"role": "observation", "content": '{"temp": 23}'},
    {"role": "assistant", "content": "23 degrees."},
]
HF_TOOL_MESSAGES = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Weather in Beijing?"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": CALL}]},
    {"role": "tool", "content": '{"temp": 23}'},
]
QWEN_TOOLS = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city.", '
    '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


@pytest.mark.parametrize("name,family", [("qwen", "qwen2"), ("qwen3", "qwen3")])
def test_qwen_tool_calls(name, family, templates, tokenizers):
    template = templates[name]
    lead = THINK if template.reasoning else ""
    expected = [
        ("<|im_start|>system\nBe brief." + QWEN_TOOLS + "<|im_end|>\n<|im_start|>user\nWeather in Beijing?<|im_end|>\n"
         "<|im_start|>assistant\n",
         lead + '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Beijing"}}\n</tool_call><|im_end|>\n'),
        ("<|im_start|>user\n<tool_response>\n{\"temp\": 23}\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
         lead + "23 degrees.<|im_end|>\n"),
    ]
    tools = json.dumps([TOOL])
    assert template.render_turns(tokenizers["llama3"], TOOL_MESSAGES, SYSTEM, tools) == expected
    # the prompt for the answer after the tool result equals the family's own template, and our Jinja
    tok = tokenizers[family]
    theirs = tok.apply_chat_template(HF_TOOL_MESSAGES, tools=[TOOL], tokenize=False, add_generation_prompt=True)
    assert template.render_prompt(tok, TOOL_MESSAGES[:3], SYSTEM, tools) == theirs
    assert tok.apply_chat_template(HF_TOOL_MESSAGES, tools=[TOOL], tokenize=False, add_generation_prompt=True,
                                   chat_template=template.to_jinja()) == theirs
    # two calls in one turn: one <tool_call> block each
    two = json.dumps([CALL, {"name": "get_time", "arguments": {"tz": "UTC"}}])
    pieces = template.render_turns(tok, [TOOL_MESSAGES[0], {"role": "function", "content": two}], SYSTEM)
    assert pieces[0][1].endswith('</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call><|im_end|>\n')


def test_llama3_tool_calls(templates, tokenizers):
    tok, template = tokenizers["llama3"], templates["llama3"]
    tools_text = (
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "You have access to the following functions. To call a function, please respond with JSON for a function call. "
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. '
        "Do not use variables.\n\n" + json.dumps(TOOL, indent=4) + "\n\n"
    )
    expected = [
        (B + "<|start_header_id|>system<|end_header_id|>\n\nBe brief.\n\n" + tools_text + "<|eot_id|>"
         "<|start_header_id|>user<|end_header_id|>\n\nWeather in Beijing?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
         '{"name": "get_weather", "parameters": {"city": "Beijing"}}<|eot_id|>'),
        ('<|start_header_id|>ipython<|end_header_id|>\n\n{"temp": 23}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
         "23 degrees.<|eot_id|>"),
    ]
    tools = json.dumps([TOOL["function"]])  # bare schemas are wrapped as {"type": "function", ...}
    assert template.render_turns(tok, TOOL_MESSAGES, SYSTEM, tools) == expected
    ids, labels = template.encode_supervised(tok, TOOL_MESSAGES, SYSTEM, tools=tools)
    assert decode(tok, [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]) == expected[0][1] + expected[1][1]
    assert tok.apply_chat_template(HF_TOOL_MESSAGES, tools=[TOOL["function"]], tokenize=False, add_generation_prompt=True,
                                   chat_template=template.to_jinja()) == template.render_prompt(tok, TOOL_MESSAGES[:3], SYSTEM, tools)


def test_mistral_tool_calls_match_the_family_template(templates, tokenizers):
    tok, template = tokenizers["mistral"], templates["mistral"]
    theirs = tok.apply_chat_template(HF_TOOL_MESSAGES, tokenize=False, add_generation_prompt=True)
    assert template.render_prompt(tok, TOOL_MESSAGES[:3], SYSTEM) == theirs
    assert '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Beijing"}}]</s>[TOOL_RESULTS] {"content": {"temp": 23}}' in theirs


def test_a_function_turn_that_is_not_json_is_a_clear_error(templates, tokenizers):
    with pytest.raises(ValueError, match="function turn must be JSON"):
        templates["qwen"].render_turns(tokenizers["llama3"], [MESSAGES[0], {"role": "function", "content": "get_weather(city)"}])
    with pytest.raises(ValueError, match="one tool call per turn"):
        templates["glm4"].render_turns(tokenizers["llama3"], [MESSAGES[0], {"role": "function", "content": json.dumps([CALL, CALL])}])


# --- truncation -----------------------------------------------------------------------------------


def test_split_budget_follows_llamafactory():
    assert split_budget(10, 4, 100) == (10, 4)  # everything fits
    assert split_budget(300, 20, 100) == (80, 20)  # short response kept whole, prompt cut
    assert split_budget(20, 300, 100) == (20, 80)  # short prompt kept whole, response cut
    assert split_budget(300, 100, 100) == (75, 25)  # both long: in proportion


def test_truncation_never_orphans_a_response(templates, tokenizers):
    tok, template = tokenizers["llama3"], templates["llama3"]
    long_question = "Please summarize the following article in three short sentences. " * 20
    messages = [{"role": "user", "content": long_question}, {"role": "assistant", "content": "Sure."}, *MESSAGES]
    (p1, r1), (p2, r2), (p3, r3) = template.encode_turns(tok, messages, SYSTEM)
    # the first prompt is cut from its start: the assistant header stays right before the kept answer
    ids, labels = template.encode_supervised(tok, messages, SYSTEM, cutoff_len=len(p1) // 2)
    assert len(ids) == len(p1) // 2
    assert ids == p1[len(p1) - (len(ids) - len(r1)):] + r1
    assert labels[-len(r1):] == r1 and set(labels[: -len(r1)]) == {IGNORE_INDEX}
    # room left after turn 1: turn 2 keeps its whole (short) answer and loses the start of its prompt
    cutoff = len(p1) + len(r1) + len(p2)
    ids, labels = template.encode_supervised(tok, messages, SYSTEM, cutoff_len=cutoff)
    assert len(ids) == cutoff and ids == p1 + r1 + p2[len(r2):] + r2
    assert [label for label in labels if label != IGNORE_INDEX] == r1 + r2
    # one token of room left: no answer token would fit, so turn 2 is dropped rather than kept as a bare prompt
    ids, _ = template.encode_supervised(tok, messages, SYSTEM, cutoff_len=len(p1) + len(r1) + 1)
    assert ids == p1 + r1
    # mask_history keeps the last exchange first and earlier ones only whole
    ids, labels = template.encode_supervised(tok, messages, SYSTEM, cutoff_len=len(p3) + len(r3) + len(p2) + len(r2) + 3, mask_history=True)
    assert ids == p2 + r2 + p3 + r3
    assert [label for label in labels if label != IGNORE_INDEX] == r3
    # a cutoff too small for any answer token trains nothing (the row is dropped by the caller)
    _, labels = template.encode_supervised(tok, messages, SYSTEM, cutoff_len=1)
    assert all(label == IGNORE_INDEX for label in labels)


def test_efficient_eos_truncation_and_train_on_prompt(templates, tokenizers):
    tok, template = tokenizers["llama3"], templates["glm4"]
    (p1, r1), (p2, r2) = template.encode_turns(tok, MESSAGES, SYSTEM)
    ids, labels = template.encode_supervised(tok, MESSAGES, SYSTEM, cutoff_len=len(p1) + len(r1) + 1)
    assert ids == p1 + r1 + [tok.eos_token_id]  # one EOS reserved and placed after the last whole answer
    assert labels[-1] == tok.eos_token_id
    ids, _ = template.encode_supervised(tok, MESSAGES, SYSTEM, cutoff_len=len(p1) + len(r1) - 1)
    assert ids == p1[2:] + r1 + [tok.eos_token_id]  # a short answer stays whole; its prompt loses its start
    long = [MESSAGES[0], {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog. " * 10}]
    (p, r), = template.encode_turns(tok, long)
    ids, labels = template.encode_supervised(tok, long, cutoff_len=2 * len(p) + 10)
    assert ids == p + r[: len(p) + 9] and labels[-1] == r[len(p) + 8]  # short prompt whole, answer cut: no EOS after it
    with pytest.raises(TuneforgeError, match="train_on_prompt"):
        template.encode_supervised(tok, MESSAGES, SYSTEM, train_on_prompt=True)


# --- system prompt, stop tokens, definition errors ------------------------------------------------


def test_default_system_and_leading_system_message(templates, tokenizers):
    tok, qwen = tokenizers["llama3"], templates["qwen"]
    default = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    assert qwen.render_turns(tok, MESSAGES)[0][0].startswith(default)
    assert qwen.render_turns(tok, MESSAGES, "")[0][0].startswith(default)  # as LLaMA-Factory: empty means default
    assert qwen.render_turns(tok, [{"role": "system", "content": SYSTEM}, *MESSAGES]) == CHATML
    assert templates["qwen3"].render_prompt(tok, MESSAGES[:1]) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_stop_token_ids(templates, tokenizers):
    tok = tokenizers["llama3"]
    assert templates["llama3"].stop_token_ids(tok) == [tok.convert_tokens_to_ids("<|eot_id|>"), tok.convert_tokens_to_ids("<|eom_id|>")]
    qwen_tok = tokenizers["qwen2"]
    assert templates["qwen"].stop_token_ids(qwen_tok) == [qwen_tok.convert_tokens_to_ids("<|im_end|>")]
    assert templates["phi"].stop_token_ids(tok) == [tok.eos_token_id]  # "<|end|>" is not one token here


def test_definition_errors_name_the_key():
    with pytest.raises(TuneforgeError, match=r"unknown key 'format_usr'; did you mean 'format_user'\?"):
        Template.from_definition("x", {"format_usr": "{{content}}"})
    with pytest.raises(TuneforgeError, match=r"format_user: unknown placeholder \{\{query\}\}"):
        Template.from_definition("x", {"format_user": "{{query}}"})
    with pytest.raises(TuneforgeError, match="append_eos must be bool"):
        Template.from_definition("x", {"append_eos": "yes"})
    assert Template.from_definition("x", {"efficient_eos": True}).append_eos is False


def test_apply_to_tokenizer_writes_the_template_into_the_saved_tokenizer(templates, tokenizers, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cached_tiny_model("qwen2", "tiny"))
    tok.eos_token = "<|endoftext|>"  # as a base model's tokenizer
    template = templates["qwen"]
    template.apply_to_tokenizer(tok)
    assert tok.eos_token == "<|im_end|>"  # replace_eos: the turn terminator becomes EOS
    tok.save_pretrained(tmp_path)
    saved = AutoTokenizer.from_pretrained(tmp_path)
    hf = [{"role": "system", "content": SYSTEM}, *MESSAGES[:3]]
    assert saved.apply_chat_template(hf, tokenize=False, add_generation_prompt=True) == template.render_prompt(saved, MESSAGES[:3], SYSTEM)
    assert saved.apply_chat_template(hf, add_generation_prompt=True, return_dict=False) == template.encode_prompt(saved, MESSAGES[:3], SYSTEM)


# --- detection ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_detection_from_the_tokenizers_own_template(family, tokenizers):
    assert tuneforge_detect_template(tokenizers[family]) == FAMILIES[family]


def test_detection_prefers_the_most_specific_template():
    definitions = _definitions()
    assert detect_template("{{ '<|im_start|>' + role }}", definitions) == "chatml"
    assert detect_template("<|im_start|> You are a helpful assistant.", definitions) == "qwen"
    assert detect_template("<|im_start|>user<|im_sep|>", definitions) == "phi4"
    assert detect_template("<start_of_turn>user <start_of_image>", definitions) == "gemma3"
    assert detect_template("[INST] <<SYS>>\n [/INST]", definitions) == "llama2"
    assert detect_template("{{ messages }}", definitions) is None
    assert tuneforge_detect_template(type("T", (), {"chat_template": None})()) is None


def test_docs_list_every_template_and_every_key(templates):
    from tuneforge.data.template import KEYS

    from .conftest import REPO

    text = (REPO / "docs" / "templates.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip().strip("`") for line in text.splitlines() if line.startswith("| `")}
    assert set(templates) <= rows, f"docs/templates.md lacks rows for {sorted(set(templates) - rows)}"
    assert set(KEYS) <= rows, f"docs/templates.md lacks keys {sorted(set(KEYS) - rows)}"
