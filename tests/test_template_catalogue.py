"""LLaMA-Factory's whole template catalogue: every name is a tuneforge template.

Text templates render a two-turn conversation with tools, tool calls and results; the first exchange
of each is asserted exactly (text, ids, labels) against the table below, which is written from each
model's published chat format (model card / its tokenizer's chat template). Multimodal names are
known and refused with the reason (they need the vision support, issue 17), never "unknown".

What each template was compared against:

- token for token with the model family's own Jinja chat template (templates/reference/*.jinja, run
  through ``apply_chat_template`` on the tiny models): ``llama3``, ``qwen``, ``qwen3``, ``mistral``,
  ``gemma`` / ``gemma3`` (tests/test_templates.py) and, through the same reference templates,
  ``gemma2``, ``gemma3n`` (Gemma format), ``skywork_o1`` (Llama 3 format), ``qwen3_5`` (Qwen3 format),
  ``cpm3``, ``cpm4``, ``falcon_h1``, ``smollm``, ``smollm2``, ``opencoder``, ``dbrx``, ``chatml_de``,
  ``marco`` (ChatML turns as Qwen2's template writes them) in ``test_same_format_as_a_reference_jinja``
  (the generation prompt of a two-turn conversation with a system prompt);
- token for token with the model's own published Jinja chat template (templates/reference/NAME.jinja):
  ``deepseekcoder``, ``orion``, ``granite3`` (granite-3.0-8b-instruct's), ``phi_small``, ``deepseek``
  (DeepSeek-V2's), ``cohere`` (Command-R+'s) in
  ``test_equals_the_models_published_jinja``;
- every other text template: the table ``FIRST_EXCHANGE`` below, written from the published format
  (not compared with a Jinja template: none is bundled for them).
"""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tuneforge.data.template import IGNORE_INDEX, Template
from tuneforge.plugin_manager import PluginManager
from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model
from tuneforge.plugins.templates.builtin import NEEDS_VISION, _definitions, multimodal_names
from tuneforge.plugins.templates.reference import reference_jinja

from .conftest import run_cli

#: Every template name registered in LLaMA-Factory 0.9.5's data/template.py (121 names).
LLAMA_FACTORY_NAMES = {
    "aeva", "alpaca", "bailing", "bailing_v2", "breeze", "chatglm3", "chatml", "chatml_de", "cohere", "cpm4", "dbrx",
    "deepseek", "deepseek3", "deepseekcoder", "deepseekr1", "default", "dots_ocr", "empty", "ernie", "ernie_nothink",
    "ernie_vl", "exaone", "falcon", "falcon_h1", "fewshot", "gemma", "gemma2", "gemma3", "gemma3n", "gemma4",
    "gemma4n", "glm4", "glm4_5v", "glm4_7", "glm4_moe", "glm4v", "glm_ocr", "glmz1", "gpt_oss", "granite3",
    "granite3_vision", "granite4", "hunyuan", "hunyuan_small", "hy3", "index", "intern2", "intern_s1", "intern_vl",
    "keye_vl", "kimi_vl", "lfm2", "lfm2_vl", "llama2", "llama2_zh", "llama3", "llama4", "llava", "llava_next",
    "llava_next_llama3", "llava_next_mistral", "llava_next_qwen", "llava_next_video", "llava_next_video_mistral",
    "llava_next_video_yi", "llava_next_yi", "mimo", "mimo_v2", "mimo_vl", "minicpm_o", "minicpm_v", "minicpm_v_4_6",
    "minimax1", "minimax2", "ministral", "ministral3", "mistral", "mistral_small", "mllama", "moonlight", "olmo",
    "openchat", "openchat-3.6", "opencoder", "paligemma", "paligemma_chat", "phi", "phi4", "phi4_mini", "phi_small",
    "pixtral", "qwen", "qwen2_audio", "qwen2_omni", "qwen2_vl", "qwen3", "qwen3_5", "qwen3_5_nothink", "qwen3_6",
    "qwen3_nothink", "qwen3_omni", "qwen3_omni_nothink", "qwen3_vl", "qwen3_vl_nothink", "sailor", "seed_coder",
    "seed_oss", "smollm", "smollm2", "solar", "starchat", "telechat2", "vicuna", "video_llava", "xuanyuan", "yi",
    "yi_vl", "youtu", "youtu_vl", "yuan", "zephyr",
}
#: Multimodal names still waiting for their media handler; refused at check. None left (templates/_multimodal.yaml is empty).
VISION_PENDING: set[str] = set()
#: Multimodal names that are real templates now (with a media handler: tests/test_vision.py, tests/test_vision_families.py).
VISION_DONE = {"qwen2_vl", "qwen3_vl", "qwen3_vl_nothink", "intern_vl", "llava", "llava_next"}
#: Multimodal templates whose own media handler is built in (tests/test_audio.py, tests/test_omni.py).
WITH_MEDIA_HANDLER = {"qwen2_audio", "qwen2_omni", "qwen3_vl", "qwen3_vl_nothink", "gemma3", "intern_vl", "llava", "llava_next",
                      "llava_next_llama3", "llava_next_yi"}
#: Multimodal names that are text templates with ``media_placeholders`` (no media handler yet: media rows are refused).
WITH_PLACEHOLDERS = {
    "dots_ocr", "ernie_vl", "gemma3", "gemma4", "gemma4n", "glm4v", "glm4_5v", "glm_ocr", "granite3_vision", "intern_s1", "keye_vl",
    "kimi_vl", "lfm2_vl", "llava", "llava_next", "llava_next_llama3", "llava_next_mistral", "llava_next_qwen", "llava_next_yi", "llava_next_video",
    "llava_next_video_mistral", "llava_next_video_yi", "mimo_vl", "minicpm_o", "minicpm_v", "minicpm_v_4_6", "mllama",
    "paligemma", "paligemma_chat", "pixtral", "qwen2_audio", "qwen2_omni", "qwen3_5_nothink", "qwen3_6", "qwen3_omni",
    "qwen3_omni_nothink", "qwen3_vl", "qwen3_vl_nothink", "intern_vl", "video_llava", "yi_vl", "youtu_vl",
}

SYSTEM = "Be brief."
ONE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
TOOLS = json.dumps([{"name": "add", "description": "Add two numbers.",
                     "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}])
WITH_TOOLS = [
    {"role": "user", "content": "What is 1+2?"},
    {"role": "function", "content": json.dumps({"name": "add", "arguments": {"a": 1, "b": 2}})},
    {"role": "observation", "content": "3"},
    {"role": "assistant", "content": "It is 3."},
]

# template -> (eos policy, prompt text, response text) of SYSTEM + ONE, with the tiny llama3 tokenizer
# (bos <|begin_of_text|>, eos <|eot_id|>). "append": the EOS id follows the response; "efficient": an
# EOS label after the response and one real EOS at the end; "none": the slot ends the turn.
FIRST_EXCHANGE = {
    'aquila': ('none', 'System: Be brief.###Human: Hi###Assistant:',
        'Hello!###'),
    'atom': ('none', 'Be brief.<|begin_of_text|>Human: Hi\n<|eot_id|><|begin_of_text|>Assistant:',
        'Hello!\n<|eot_id|>'),
    'baichuan': ('efficient', 'Be brief.<reserved_102>Hi<reserved_103>',
        'Hello!'),
    'bailing': ('efficient', '<role>SYSTEM</role>Be brief.<role>HUMAN</role>Hi<role>ASSISTANT</role>',
        'Hello!'),
    'bailing_v2': ('efficient', '<role>SYSTEM</role>Be brief.<|role_end|><role>HUMAN</role>Hi<|role_end|><role>ASSISTANT</role>',
        'Hello!<|role_end|>'),
    'belle': ('none', '<|begin_of_text|>Be brief.Human: Hi\n\nBelle: ',
        'Hello!<|eot_id|>\n\n'),
    'bluelm': ('append', 'Be brief.[|Human|]:Hi[|AI|]:',
        'Hello!'),
    'breeze': ('efficient', '<|begin_of_text|>Be brief. [INST] Hi [/INST] ',
        'Hello!'),
    'chatglm2': ('efficient', '[gMASK]sopBe brief.[Round 0]\n\n问：Hi\n\n答：',
        'Hello!'),
    'chatglm3': ('efficient', '[gMASK]sop<|system|>\nBe brief.<|user|>\nHi<|assistant|>',
        '\nHello!'),
    'chatml_de': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'codegeex2': ('append', '[gMASK]sopBe brief.Hi',
        'Hello!'),
    'codegeex4': ('efficient', '[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi<|assistant|>\n',
        'Hello!'),
    'cpm': ('append', '<|begin_of_text|>Be brief.<用户>Hi<AI>',
        'Hello!'),
    'cpm3': ('none', '<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'cpm4': ('none', '<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'dbrx': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'deepseekcoder': ('none', '<|begin_of_text|>Be brief.### Instruction:\nHi\n### Response:\n',
        'Hello!\n<|EOT|>\n'),
    'deepseekr1': ('append', '<|begin_of_text|>Be brief.<｜User｜>Hi<｜Assistant｜>',
        '<think>\n\n</think>\n\nHello!'),
    'ernie': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n\n<|im_start|>user\nHi<|im_end|>\n\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n\n'),
    'ernie_nothink': ('none', '<|begin_of_sentence|>Be brief.\nUser: Hi\nAssistant: ',
        'Hello!<|end_of_sentence|>'),
    'exaone': ('none', '[|system|]Be brief.[|endofturn|]\n[|user|]Hi\n[|assistant|]',
        'Hello!<|eot_id|>\n'),
    'falcon_h1': ('none', '<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'fewshot': ('efficient', 'Be brief.Hi',
        'Hello!\n\n'),
    'gemma2': ('none', '<|begin_of_text|><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n',
        'Hello!<end_of_turn>\n'),
    'gemma3n': ('none', '<|begin_of_text|><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n',
        'Hello!<end_of_turn>\n'),
    'glm4_moe': ('efficient', '[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi<|assistant|>\n',
        '<think></think>\nHello!'),
    'glmz1': ('efficient', '[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi<|assistant|>\n',
        '<think></think>\nHello!'),
    'gpt_oss': ('efficient', '<|start|>system<|message|>Be brief.<|end|><|start|>user<|message|>Hi<|end|><|start|>assistant',
        '<|channel|>analysis<|message|><|end|><|start|>assistant<|channel|>final<|message|>Hello!<|end|>'),
    'granite3': ('none', '<|start_of_role|>system<|end_of_role|>Be brief.<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>Hi<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>',
        'Hello!<|end_of_text|>\n'),
    'granite4': ('none', '<|start_of_role|>system<|end_of_role|>Be brief.<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>Hi<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>',
        'Hello!<|end_of_text|>\n'),
    'hunyuan': ('none', '<|startoftext|>Be brief.<|extra_4|>Hi<|extra_0|>',
        'Hello!<|eos|>'),
    'index': ('efficient', '<unk>Be brief.reserved_0Hireserved_1',
        'Hello!'),
    'intern': ('none', '<|begin_of_text|><|System|>:Be brief.\n<|User|>:Hi\n<|Bot|>:',
        'Hello!<eoa>\n'),
    'llama2_zh': ('append', '<|begin_of_text|>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]',
        'Hello!'),
    'llama4': ('none', '<|begin_of_text|><|header_start|>system<|header_end|>\n\nBe brief.<|eot|><|header_start|>user<|header_end|>\n\nHi<|eot|><|header_start|>assistant<|header_end|>\n\n',
        'Hello!<|eot|>'),
    'marco': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'mimo': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        '<think>\n\n</think>\n\nHello!<|im_end|>\n'),
    'mimo_v2': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        '<think></think>Hello!<|im_end|>\n'),
    'minimax1': ('none', '<beginning_of_sentence>system ai_setting=assistant\nBe brief.<end_of_sentence>\n<beginning_of_sentence>user name=user\nHi<end_of_sentence>\n<beginning_of_sentence>ai name=assistant\n',
        'Hello!<end_of_sentence>\n'),
    'minimax2': ('none', ']~!b[]~b]system\nBe brief.[e~[\n]~b]user\nHi[e~[\n]~b]ai\n',
        '<think>\n\n</think>\n\nHello![e~[\n'),
    'ministral': ('append', '<|begin_of_text|>[INST]Be brief.\n\nHi[/INST]',
        'Hello!'),
    'ministral3': ('append', '<|begin_of_text|>[INST]Be brief.\n\nHi[/INST]',
        'Hello!'),
    'mistral_small': ('append', '<|begin_of_text|>[SYSTEM_PROMPT]Be brief.[/SYSTEM_PROMPT][INST]Hi[/INST]',
        'Hello!'),
    'moonlight': ('none', '<|im_system|>system<|im_middle|>Be brief.<|im_end|><|im_user|>user<|im_middle|>Hi<|im_end|><|im_assistant|>assistant<|im_middle|>',
        'Hello!<|im_end|>'),
    'olmo': ('none', '<|eot_id|><|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n',
        'Hello!<|eot_id|>\n'),
    'openchat-3.6': ('none', '<|begin_of_text|>Be brief.<|start_header_id|>GPT4 Correct User<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>GPT4 Correct Assistant<|end_header_id|>\n\n',
        'Hello!<|eot_id|>'),
    'opencoder': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'orion': ('append', '<|begin_of_text|>Be brief.Human: Hi\n\nAssistant: <|eot_id|>',
        'Hello!'),
    'phi4_mini': ('none', '<|system|>Be brief.<|end|><|user|>Hi<|end|><|assistant|>',
        'Hello!<|end|>'),
    'phi_small': ('none', '<|begin_of_text|><|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n',
        'Hello!<|end|>\n'),
    'qwen3_5': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        '<think>\n\n</think>\n\nHello!<|im_end|>\n'),
    'sailor': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>question\nHi<|im_end|>\n<|im_start|>answer\n',
        'Hello!<|im_end|>\n'),
    'seed_coder': ('append', '<|begin_of_text|>system\nBe brief.<|eot_id|><|begin_of_text|>user\nHi<|eot_id|><|begin_of_text|>assistant\n',
        'Hello!'),
    'seed_oss': ('append', '<|begin_of_text|>system\nBe brief.<|eot_id|><|begin_of_text|>user\nHi<|eot_id|><|begin_of_text|>assistant\n',
        '<seed:think></seed:think>Hello!'),
    'skywork_o1': ('none', '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
        'Hello!<|eot_id|>'),
    'smollm': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'smollm2': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'solar': ('efficient', '### System:\nBe brief.\n\n### User:\nHi\n\n### Assistant:\n',
        'Hello!'),
    'telechat': ('append', '<_system>Be brief.<_end><_user>Hi<_bot>',
        'Hello!'),
    'telechat2': ('append', '<_system>Be brief.<_user>Hi<_bot>',
        'Hello!'),
    'xuanyuan': ('append', 'Be brief.Human: Hi Assistant:',
        'Hello!'),
    'xverse': ('append', 'Be brief.Human: Hi\n\nAssistant: ',
        'Hello!'),
    'yayi': ('append', '<|System|>:\nBe brief.\n\n<|Human|>:\nHi\n\n<|YaYi|>:',
        'Hello!\n\n'),
    'yuan': ('none', 'Be brief.Hi<sep>',
        'Hello!<eod>\n'),
    'ziya': ('append', 'Be brief.<human>:Hi\n<bot>:',
        'Hello!\n'),
    'aeva': ('efficient', '[gMASK]<sop><|system|>Be brief.<|user|>Hi<|assistant|>',
        '<think></think>Hello!'),
    'dots_ocr': ('efficient', '<|system|>Be brief.<|endofsystem|>\n<|user|>Hi<|endofuser|><|assistant|>',
        'Hello!<|endofassistant|>'),
    'ernie_vl': ('none', 'Be brief.\nUser: Hi\nAssistant: ',
        '<think>\n\n</think>\n\nHello!<|end_of_sentence|>'),
    'gemma4': ('none', '<|begin_of_text|><|turn>system\n<|think|>\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n',
        '<|channel>thought\n<channel|>Hello!<turn|>\n'),
    'gemma4n': ('none', '<|begin_of_text|><|turn>system\n<|think|>\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n',
        '<|channel>thought\n<channel|>Hello!<turn|>\n'),
    'glm4_5v': ('efficient', '[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi<|assistant|>\n',
        '<think></think>\nHello!'),
    'glm4_7': ('efficient', '[gMASK]<sop><|system|>Be brief.<|user|>Hi<|assistant|>',
        '<think></think>Hello!'),
    'glm4v': ('efficient', '[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi<|assistant|>\n',
        '<think></think>Hello!'),
    'glm_ocr': ('efficient', '[gMASK]<sop><|system|>\nBe brief.<|user|>\nHi<|assistant|>',
        '\nHello!'),
    'granite3_vision': ('append', '<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n',
        'Hello!'),
    'hunyuan_small': ('none', '<｜hy_begin▁of▁sentence｜>Be brief.<｜hy_place▁holder▁no▁3｜><｜hy_User｜>Hi<｜hy_place▁holder▁no▁8｜>',
        'Hello!<｜hy_place▁holder▁no▁2｜>'),
    'hy3': ('none', '<|begin_of_text|>Be brief.<｜hy_User｜>Hi<｜hy_Assistant｜>',
        '<think></think>Hello!<｜hy_eos｜>'),
    'intern_s1': ('none', '<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'keye_vl': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        '<think>\n\n</think>\n\nHello!<|im_end|>\n'),
    'kimi_vl': ('none', '<|im_system|>system<|im_middle|>Be brief.<|im_end|><|im_user|>user<|im_middle|>Hi<|im_end|><|im_assistant|>assistant<|im_middle|>',
        '◁think▷◁/think▷Hello!<|im_end|>'),
    'lfm2': ('none', '<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'lfm2_vl': ('none', '<|begin_of_text|><|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'llava_next_llama3': ('none', '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
        'Hello!<|eot_id|>'),
    'llava_next_mistral': ('append', '<|begin_of_text|>[INST] Be brief.\n\nHi[/INST]',
        ' Hello!'),
    'llava_next_qwen': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'llava_next_video': ('append', 'Be brief. USER: Hi ASSISTANT:',
        'Hello!'),
    'llava_next_video_mistral': ('append', '<|begin_of_text|>[INST] Be brief.\n\nHi[/INST]',
        ' Hello!'),
    'llava_next_video_yi': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'llava_next_yi': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'mimo_vl': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        '<think>\n\n</think>\n\nHello!<|im_end|>\n'),
    'minicpm_o': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'minicpm_v': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'minicpm_v_4_6': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'mllama': ('none', '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
        'Hello!<|eot_id|>'),
    'paligemma': ('append', '<|begin_of_text|>Be brief.Hi\n',
        'Hello!'),
    'paligemma_chat': ('none', '<|begin_of_text|><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n',
        'Hello!<end_of_turn>\n'),
    'pixtral': ('append', '<|begin_of_text|>[INST]Be brief.\n\nHi[/INST]',
        'Hello!'),
    'qwen2_audio': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'qwen2_omni': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'qwen3_5_nothink': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'qwen3_6': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        '<think>\n\n</think>\n\nHello!<|im_end|>\n'),
    'qwen3_omni': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        '<think>\n\n</think>\n\nHello!<|im_end|>\n'),
    'qwen3_omni_nothink': ('none', '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n',
        'Hello!<|im_end|>\n'),
    'video_llava': ('append', 'Be brief. USER: Hi ASSISTANT:',
        'Hello!'),
    'yi_vl': ('efficient', 'Be brief.### Human: Hi\n### Assistant:',
        'Hello!\n'),
    'youtu': ('none', '<|begin_of_text|>Be brief.<|User|>Hi<|Assistant|>',
        '<think>\n\n</think>\n\nHello!<|end_of_text|>'),
    'youtu_vl': ('none', '<|begin_of_text|>system\nBe brief.<|end_of_text|>\n<|begin_of_text|>user\nHi<|end_of_text|>\n<|begin_of_text|>assistant\n',
        'Hello!<|end_of_text|>\n'),
}

# template -> (tiny family whose reference Jinja writes the same format, the built-in template that is
# compared with that Jinja in tests/test_templates.py)
SAME_FORMAT = {
    "gemma2": ("gemma", "gemma"), "gemma3n": ("gemma", "gemma"), "skywork_o1": ("llama3", "llama3"),
    "qwen3_5": ("qwen3", "qwen3"), "cpm3": ("qwen2", "qwen"), "cpm4": ("qwen2", "qwen"), "falcon_h1": ("qwen2", "qwen"), "smollm": ("qwen2", "qwen"), "smollm2": ("qwen2", "qwen"),
    "opencoder": ("qwen2", "qwen"), "dbrx": ("qwen2", "qwen"), "chatml_de": ("qwen2", "qwen"), "marco": ("qwen2", "qwen"),
}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(cached_tiny_model("llama3"))


@pytest.fixture(scope="module")
def templates():
    return {name: Template.from_definition(name, d) for name, d in _definitions().items()}


def test_every_llamafactory_name_is_a_template(templates):
    assert LLAMA_FACTORY_NAMES - VISION_PENDING <= set(templates), sorted(LLAMA_FACTORY_NAMES - VISION_PENDING - set(templates))
    assert set(multimodal_names()) == VISION_PENDING
    assert not VISION_PENDING & set(templates)
    manager = PluginManager(autoload=False)
    for name in VISION_PENDING:
        assert manager.entry("template", name).status == f"unavailable: {NEEDS_VISION}"
    for name in LLAMA_FACTORY_NAMES - VISION_PENDING:
        assert manager.entry("template", name).status == "active", name
    assert set(FIRST_EXCHANGE) == set(templates) - {
        "default", "empty", "alpaca", "vicuna", "chatml", "llama2", "llama3", "qwen", "qwen3", "qwen3_nothink", "mistral",
        "gemma", "gemma3", "glm4", "phi", "phi4", "deepseek", "deepseek3", "yi", "zephyr", "baichuan2", "intern2", "cohere",
        "falcon", "starchat", "openchat"} - VISION_DONE  # those 26: tests/test_templates.py; qwen2_vl: tests/test_vision.py


def test_multimodal_templates_name_their_placeholders():
    """Each converted multimodal name says what its processor expects in the text per medium, and has no
    ``media:`` handler yet (so a row with images is refused at check, not trained as text)."""
    from tuneforge.plugins.templates.builtin import _load, media_placeholders

    files = dict(_load())
    assert {name for name, d in files.items() if d.get("media_placeholders")} == WITH_PLACEHOLDERS
    for name in WITH_PLACEHOLDERS:
        found = media_placeholders(name)
        assert found and set(found) <= {"image", "video", "audio"}, name
        assert all(isinstance(v, str) and v for v in found.values()), name
        assert ("media" in files[name]) == (name in WITH_MEDIA_HANDLER), name
    assert media_placeholders("mllama") == {"image": "<|image|>"}
    assert media_placeholders("qwen2_audio") == {"audio": "<|AUDIO|>"}
    assert media_placeholders("llama3") == {}


@pytest.fixture(scope="module")
def rows_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rows")
    (folder / "rows.json").write_text(json.dumps([{"instruction": "Hi", "input": "", "output": "Hello!"}]))
    (folder / "dataset_info.json").write_text(json.dumps({"rows": {"file_name": "rows.json"}}))
    return folder


@pytest.mark.parametrize("name", sorted(LLAMA_FACTORY_NAMES - VISION_PENDING))
def test_every_llamafactory_name_passes_check_and_renders_tools(name, templates, tokenizer, rows_dir):
    """What `tuneforge check` validates (the whole config, before torch), then a two-turn conversation with
    tools, a call and a result, for every LLaMA-Factory template name (tokenizer only)."""
    from tuneforge.plan import prepare

    prepared = prepare(None, [f"model_name_or_path={cached_tiny_model('llama3')}", f"template={name}", "dataset=rows",
                              f"dataset_dir={rows_dir}", f"output_dir={rows_dir / 'out'}"], manager=_MANAGER)
    assert prepared.config.template == name
    template = templates[name]
    turns = template.render_turns(tokenizer, WITH_TOOLS, SYSTEM, tools=TOOLS)
    assert len(turns) == 2 and "add" in turns[0][0] and "add" in turns[0][1] and "It is 3." in turns[1][1]
    ids, labels = template.encode_supervised(tokenizer, WITH_TOOLS, SYSTEM, tools=TOOLS)
    trained = tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert "It is 3." in trained and "What is 1+2?" not in trained


_MANAGER = PluginManager(autoload=False)


@pytest.mark.parametrize("name", sorted(FIRST_EXCHANGE))
def test_first_exchange_text_ids_and_labels(name, templates, tokenizer):
    policy, prompt, response = FIRST_EXCHANGE[name]
    template = templates[name]
    assert template.render_turns(tokenizer, ONE, SYSTEM) == [(prompt, response)]
    ids, labels = template.encode_supervised(tokenizer, ONE, SYSTEM)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    response_ids = tokenizer.encode(response, add_special_tokens=False)
    eos = tokenizer.eos_token_id
    tail = {"append": [eos], "efficient": [eos], "none": []}[policy]
    assert ids == prompt_ids + response_ids + tail
    assert labels == [IGNORE_INDEX] * len(prompt_ids) + response_ids + tail


@pytest.mark.parametrize("name", sorted(set(_definitions())))
def test_two_turns_with_tools_render_and_train_only_the_replies(name, templates, tokenizer):
    template = templates[name]
    turns = template.render_turns(tokenizer, WITH_TOOLS, SYSTEM, tools=TOOLS)
    assert len(turns) == 2
    first_prompt = turns[0][0]
    assert SYSTEM in first_prompt and "What is 1+2?" in first_prompt and "add" in first_prompt  # tools are offered
    assert "a" in turns[0][1] and "1" in turns[0][1] and "add" in turns[0][1]  # the call is written in the reply
    assert "3" in turns[1][0] and "It is 3." in turns[1][1]
    ids, labels = template.encode_supervised(tokenizer, WITH_TOOLS, SYSTEM, tools=TOOLS)
    trained = tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert "It is 3." in trained and "What is 1+2?" not in trained and SYSTEM not in trained


# template -> (whether the model's published Jinja renders the system prompt (Orion's ignores it), the EOS
# token of the model when the published Jinja writes it literally instead of eos_token)
PUBLISHED_WITH_TOOLS = {"qwen3_5": "qwen3", "lfm2": "qwen2"}  # template -> the tiny tokenizer rendering it


@pytest.mark.parametrize("name", sorted(PUBLISHED_WITH_TOOLS))
def test_a_tool_conversation_equals_the_models_published_jinja(name, templates):
    """System prompt, tools, a tool call, its result and the answer: our training rendering is exactly what the
    model's published chat template (templates/reference/NAME.jinja) renders for the same conversation, and the
    saved tokenizer's Jinja renders the generation prompt as we do."""
    tokenizer = AutoTokenizer.from_pretrained(cached_tiny_model(PUBLISHED_WITH_TOOLS[name]))
    template = templates[name]
    turns = template.render_turns(tokenizer, WITH_TOOLS, SYSTEM, tools=TOOLS)
    call = turns[0][1]
    if name == "lfm2":  # LFM2's template has no tool_calls field: the assistant writes the call as text
        tool_call = {"content": call.removesuffix("<|im_end|>\n")}
    else:
        call = call.removeprefix("<think>\n\n</think>\n\n")
        tool_call = {"content": "", "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]}
    hf = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 1+2?"}, {"role": "assistant", **tool_call},
          {"role": "tool", "content": "3"}, {"role": "assistant", "content": "It is 3."}]
    tools = [{"type": "function", "function": tool} for tool in json.loads(TOOLS)]
    tokenizer.chat_template = reference_jinja(name)
    published = tokenizer.apply_chat_template(hf, tools=tools, tokenize=False)
    assert "".join(prompt + response for prompt, response in turns) == published
    ids, _ = template.encode_supervised(tokenizer, WITH_TOOLS, SYSTEM, tools=TOOLS)
    assert ids == tokenizer.encode(published, add_special_tokens=False)
    template.apply_to_tokenizer(tokenizer)
    ours = tokenizer.apply_chat_template(hf[:4], tools=tools, tokenize=False, add_generation_prompt=True)
    assert ours == template.render_prompt(tokenizer, WITH_TOOLS[:3], SYSTEM, tools=TOOLS)


def test_minimax2_tool_conversation_with_reasoning_equals_its_published_jinja(templates):
    """MiniMax-M2's published template (templates/reference/minimax2.jinja): system prompt, tools, a call and an
    answer each after a thought block, and the tool result, token for token."""
    tokenizer = AutoTokenizer.from_pretrained(cached_tiny_model("qwen2"))
    call = {"name": "add", "arguments": {"a": 1, "b": 2}}
    ours = [WITH_TOOLS[0], {"role": "function", "content": "<think>\nAdd them.\n</think>\n\n" + json.dumps(call)}, WITH_TOOLS[2],
            {"role": "assistant", "content": "<think>\nDone.\n</think>\n\nIt is 3."}]
    hf = [{"role": "system", "content": SYSTEM}, WITH_TOOLS[0],
          {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n", "tool_calls": [{"type": "function", "function": call}]},
          {"role": "tool", "content": "3"}, ours[3]]
    tokenizer.chat_template = reference_jinja("minimax2")
    published = tokenizer.apply_chat_template(hf, tools=[{"type": "function", "function": t} for t in json.loads(TOOLS)], tokenize=False)
    template = templates["minimax2"]
    assert "".join(p + r for p, r in template.render_turns(tokenizer, ours, SYSTEM, tools=TOOLS)) == published
    ids, labels = template.encode_supervised(tokenizer, ours, SYSTEM, tools=TOOLS)
    assert ids == tokenizer.encode(published, add_special_tokens=False)
    trained = tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert trained.startswith("<think>\nAdd them.") and "What is 1+2?" not in trained


PUBLISHED = {"deepseekcoder": (True, None), "orion": (False, None), "granite3": (True, None), "phi_small": (True, None),
             "deepseek": (True, None), "cohere": (True, "<|END_OF_TURN_TOKEN|>")}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_equals_the_models_published_jinja(name, templates):
    """The model's own chat template (templates/reference/NAME.jinja, as published with the model) renders
    exactly our generation prompt for a two-turn conversation, and the tokens are the same."""
    with_system, eos = PUBLISHED[name]
    tokenizer = AutoTokenizer.from_pretrained(cached_tiny_model("llama3"))
    if eos:
        tokenizer.add_special_tokens({"eos_token": eos})
    tokenizer.chat_template = reference_jinja(name)
    messages = ONE + [{"role": "user", "content": "And 2+2?"}]
    template = templates[name]
    for system in ([SYSTEM, None] if with_system else [None]):
        hf = ([{"role": "system", "content": system}] if system else []) + messages
        expected = tokenizer.apply_chat_template(hf, tokenize=False, add_generation_prompt=True)
        assert template.render_prompt(tokenizer, messages, system) == expected, system
        assert template.encode_prompt(tokenizer, messages, system) == tokenizer.encode(expected, add_special_tokens=False)
    # and the trained reply is what the published template writes for the assistant turn
    full = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}] + ONE if with_system else ONE, tokenize=False)
    prompt, reply = template.render_turns(tokenizer, ONE, SYSTEM if with_system else None)[0]
    assert full.startswith(prompt + reply.removesuffix(tokenizer.eos_token if template.append_eos else ""))


@pytest.mark.parametrize("name", sorted(SAME_FORMAT))
def test_same_format_as_a_reference_jinja(name, templates):
    """Templates that share a family's format render what that family's own Jinja renders (given the system prompt)."""
    family, _ = SAME_FORMAT[name]
    tokenizer = AutoTokenizer.from_pretrained(cached_tiny_model(family))
    assert tokenizer.chat_template == reference_jinja(family)
    messages = ONE + [{"role": "user", "content": "And 2+2?"}]
    hf = [{"role": "system", "content": SYSTEM}] + messages
    expected = tokenizer.apply_chat_template(hf, tokenize=False, add_generation_prompt=True)
    template = templates[name]
    if name in ("cpm3", "cpm4", "falcon_h1"):
        expected = (tokenizer.bos_token or "") + expected
    assert template.render_prompt(tokenizer, messages, SYSTEM) == expected
    assert template.encode_prompt(tokenizer, messages, SYSTEM) == tokenizer.encode(expected, add_special_tokens=False)


def test_check_names_vision_templates_and_accepts_new_ones(tmp_path):
    # the last names that waited for the vision work (llava, llava_next) are templates now; a name still
    # waiting would be refused with NEEDS_VISION (tests/test_vision_llava.py keeps that mechanism tested)
    config = tmp_path / "c.yaml"
    (tmp_path / "rows.json").write_text(json.dumps([{"instruction": "Hi", "input": "", "output": "Hello!"}]))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"rows": {"file_name": "rows.json"}}))
    for name in ("llava", "llava_next", "gemma2", "llama4", "deepseekr1", "gpt_oss", "glm4_moe", "mistral_small", "phi4_mini", "granite3", "qwen3_5"):
        config.write_text(f"model_name_or_path: {cached_tiny_model('llama3')}\ntemplate: {name}\ndataset: rows\n"
                          f"dataset_dir: {tmp_path}\noutput_dir: {tmp_path / 'out'}\n")
        result = run_cli("check", str(config))
        assert result.returncode == 0 and "config OK" in result.stdout, (name, result.stderr[-2000:])


def test_known_models_of_the_new_families():
    """The web UI's model list and its template choice know the added families (``models:`` in the YAML)."""
    from tuneforge.plugins.apps.webui import registry

    manager = PluginManager(autoload=False)
    expected = {"gemma-2-9b-it": "gemma2", "Llama-4-Scout-17B-16E-Instruct": "llama4", "DeepSeek-R1-Distill-Qwen-7B": "deepseekr1",
                "gpt-oss-20b": "gpt_oss", "GLM-4.5-Air": "glm4_moe", "Mistral-Small-3.1-24B-Instruct-2503": "mistral_small",
                "Phi-4-mini-instruct": "phi4_mini", "granite-3.1-8b-instruct": "granite3", "SmolLM2-1.7B-Instruct": "smollm2",
                "Llama-3.2-11B-Vision-Instruct": "mllama", "GLM-4.7": "glm4_7", "LFM2-1.2B": "lfm2", "Qwen2-Audio-7B-Instruct": "qwen2_audio",
                "llava-v1.6-mistral-7b-hf": "llava_next_mistral", "Kimi-VL-A3B-Instruct": "kimi_vl"}
    for name, template in expected.items():
        model = registry.known_model(manager, name)
        assert model is not None and model.template == template, name
        assert model.hub_id.endswith("/" + name)


REASONING = sorted(name for name, d in _definitions().items() if d.get("reasoning"))


@pytest.mark.parametrize("name", REASONING)
def test_reasoning_templates_keep_train_and_drop_thoughts_as_llamafactory(name, templates, tokenizer):
    """Which turns keep their reasoning and what is trained, for every reasoning template."""
    import dataclasses

    template = templates[name]
    open_tag, close_tag = template.thought_words
    thought = f"{open_tag}Think.{close_tag}"
    empty = open_tag + close_tag
    two = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": thought + "Hello!"},
           {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]
    (p1, r1), (p2, r2) = template.render_turns(tokenizer, two)
    assert r1.startswith(thought + "Hello!")  # a trained reply keeps its thought
    assert r2.startswith(empty + "Bye!")  # a reply without one gets the empty block, trained
    (_, r1), (p2, r2) = template.render_turns(tokenizer, two, enable_thinking=False)
    assert r1.startswith("Hello!") and r2.startswith("Bye!") and p2.endswith(empty)  # the block is given, not trained
    history = template.render_prompt(tokenizer, two[:3])
    assert "Think." not in history and "Hello!" in history  # history drops past thoughts ...
    kept = dataclasses.replace(template, preserve_thinking=True).render_prompt(tokenizer, two[:3])
    assert thought + "Hello!" in kept  # ... unless preserve_thinking
    # the generation prompt: nothing added with enable_thinking, the empty block without
    assert template.render_prompt(tokenizer, two[:1], enable_thinking=False).endswith(empty)
    assert not template.render_prompt(tokenizer, two[:1]).endswith(empty)


NOTHINK = sorted(name for name in _definitions() if name.endswith("_nothink"))


@pytest.mark.parametrize("name", NOTHINK)
def test_nothink_templates_never_add_or_remove_a_thought_block(name, templates, tokenizer):
    """As LLaMA-Factory's *_nothink templates: no reasoning, whatever enable_thinking says; a reply is trained as written."""
    template = templates[name]
    assert not template.reasoning
    two = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
           {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]
    for thinking in (True, False):
        (_, r1), (p2, r2) = template.render_turns(tokenizer, two, enable_thinking=thinking)
        assert r1.startswith("Hello!") and r2.startswith("Bye!") and "<think>" not in p2
        assert "<think>" not in template.render_prompt(tokenizer, two[:3], enable_thinking=thinking)


def test_preserve_thinking_config_key_keeps_history_thoughts_for_the_new_reasoning_templates(rows_dir):
    """preserve_thinking (config key, as in LLaMA-Factory) reaches the template: history replies keep their thoughts."""
    from tuneforge.plan import prepare
    from tuneforge.train.context import RunContext
    from tuneforge.train.model import resolve_template

    tokenizer = AutoTokenizer.from_pretrained(cached_tiny_model("qwen3"))
    two = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nThink.\n</think>\n\nHello!"},
           {"role": "user", "content": "Bye"}]
    for name in ("qwen3_6", "glm4_7", "hy3"):
        for keep in (False, True):
            prepared = prepare(None, [f"model_name_or_path={cached_tiny_model('qwen3')}", f"template={name}", "dataset=rows",
                                      f"dataset_dir={rows_dir}", f"output_dir={rows_dir / 'out'}", f"preserve_thinking={keep}"],
                               manager=_MANAGER)
            template = resolve_template(RunContext(prepared.config, prepared.plan, prepared.manager), tokenizer)
            open_tag, close_tag = template.thought_words
            messages = [two[0], {"role": "assistant", "content": f"{open_tag}Think.{close_tag}Hello!"}, two[2]]
            assert ("Think." in template.render_prompt(tokenizer, messages)) is keep, (name, keep)


def test_a_converted_multimodal_template_refuses_media_rows_at_check(tmp_path):
    """Until the generic media handler reads media_placeholders, a dataset with images and such a template stops at
    `check` with the text-only error (never trains <image> as plain text)."""
    rows = [{"messages": [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A cat."}],
             "images": ["cat.png"]}]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "dataset_info.json").write_text(json.dumps({"rows": {
        "file_name": "rows.json", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))
    config = tmp_path / "c.yaml"
    config.write_text(f"model_name_or_path: {cached_tiny_model('llama3')}\ntemplate: mllama\ndataset: rows\n"
                      f"dataset_dir: {tmp_path}\noutput_dir: {tmp_path / 'out'}\n")
    result = run_cli("check", str(config))
    assert result.returncode != 0
    assert "has the media column 'images'" in result.stderr and "template 'mllama' is text-only" in result.stderr
