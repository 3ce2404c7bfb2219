"""Deterministic tiny random-weight causal LMs, built offline, for tests, examples and benchmarks.

``build_tiny_model(out_dir, family, size, seed)`` writes a Hugging Face model directory (config,
generation config, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``,
``chat_template.jinja``) that ``AutoModelForCausalLM`` / ``AutoTokenizer`` load with no network.
The weights are random (``torch.manual_seed(seed)`` before construction) and the tokenizer is a
byte-level BPE trained with the ``tokenizers`` library on a small corpus embedded below, so every
byte sequence (Chinese included) round-trips. Each family carries the real model's special tokens,
BOS/EOS/PAD conventions and a chat template written to match the real Hugging Face template.
Building twice with the same arguments gives byte-identical files.

Family notes (the choices a real checkpoint leaves open):

* ``llama3``: Llama-3/3.1-Instruct special tokens at the end of the vocabulary in the real relative
  order; bos ``<|begin_of_text|>``, eos ``<|eot_id|>`` (the Instruct convention), pad the dedicated
  ``<|finetune_right_pad_id|>`` (Llama 3.1). Plain ``tokenizer(text)`` prepends BOS as the real
  tokenizer does; ``add_special_tokens=False`` (what ``apply_chat_template`` uses) does not. The
  generation config stops on ``<|end_of_text|>``, ``<|eom_id|>`` and ``<|eot_id|>``. Untied head.
* ``qwen2`` / ``qwen3``: ChatML tokens at the end of the vocabulary; no BOS; eos ``<|im_end|>``, pad
  ``<|endoftext|>``. ``<tool_call>``-style and (qwen3) ``<think>`` tokens are added tokens that are
  *not* special, as in the real tokenizers, so ``decode(skip_special_tokens=True)`` keeps them.
  qwen2 inserts the default system prompt "You are a helpful assistant." when none is given; qwen3
  has no default system prompt and honours ``enable_thinking``. Tied embeddings (small Qwen models).
* ``mistral``: ``<unk>``, ``<s>``, ``</s>``, ``[INST]``... at ids 0.. as in Mistral-7B-Instruct-v0.3;
  bos ``<s>`` (added on plain encode), eos ``</s>``, pad ``<unk>`` (the real tokenizer has none). The
  system prompt is prepended to the first user message (v0.3 puts it in the last one; the brief and
  LLaMA-Factory's template use the first). Tool calls render v0.3-style but without call ids.
  Untied head, no sliding window.
* ``gemma``: ``<pad>``, ``<eos>``, ``<bos>``, ``<unk>`` at ids 0-3 as in Gemma; bos ``<bos>`` (added
  on plain encode), **eos ``<end_of_turn>``** (the turn terminator the instruction-tuned template
  emits; the real tokenizer_config says ``<eos>`` but its generation config stops on both, as does
  ours), pad ``<pad>``. The system prompt is prepended to the first user turn (Gemma 3 style).
  Tied embeddings.

The tokenizer is saved as the generic ``TokenizersBackend`` (transformers 5's name for
``PreTrainedTokenizerFast``): the model-specific classes (``LlamaTokenizer``, ...) in transformers 5
rebuild the backend from vocab/merges with their own pre-tokenizer, which would not be this one.

Transformers 5 does not write ``add_bos_token`` to ``tokenizer_config.json``: whether BOS is added
lives only in ``tokenizer.json``'s post-processor, so after loading, ``tokenizer.add_bos_token``
reads False even for llama3/mistral/gemma, which do add BOS. Probe ``tokenizer("x")`` instead.

Nothing here imports torch, transformers or tokenizers at module import time.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from typing import Any

from tuneforge.plugins.templates.reference import reference_jinja

FAMILIES = ("llama3", "qwen2", "qwen3", "mistral", "gemma")
#: Vision-language families: loaded with AutoModelForImageTextToText, with an image processor beside.
VISION_FAMILIES = ("qwen2_vl", "qwen3_vl", "gemma3", "intern_vl", "llava", "llava_next", "llava_next_llama3", "llava_next_yi")
#: Audio-language families: a feature extractor and processor beside the model (tiny_model/audio.py).
AUDIO_FAMILIES = ("qwen2_audio", "qwen2_omni")
SIZES = ("tiny", "small")

#: Bump when the builder's output changes, so stale cached models are not reused.
CACHE_VERSION = "v1"
CACHE_ENV = "TUNEFORGE_TINY_CACHE"

# --------------------------------------------------------------------------------------------------
# Sizes. The model's vocab_size is the tokenizer length rounded up to a multiple of 64 (real models
# pad the embedding matrix too), so the exact parameter count depends on the trained tokenizer;
# tests check the ranges tiny = 1-5 M and small = 20-40 M.
# --------------------------------------------------------------------------------------------------

_SIZE_SPECS: dict[str, dict[str, int]] = {
    "tiny": {
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "bpe_vocab": 2048,
    },
    "small": {
        "hidden_size": 512,
        "intermediate_size": 1536,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 64,
        "bpe_vocab": 8192,
    },
}

_VOCAB_MULTIPLE = 64
_MAX_POSITIONS = 2048

# Pre-tokenizer split patterns of the real tokenizers (Llama 3 groups up to 3 digits, Qwen splits
# single digits; Mistral and Gemma are SentencePiece models with split digits in reality, so the
# Qwen pattern is the closer byte-level stand-in for them).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# --------------------------------------------------------------------------------------------------
# Chat templates (Jinja): the reference templates live with the template plugin
# (templates/reference/*.jinja, written to render like the real Hugging Face templates).
# --------------------------------------------------------------------------------------------------

_LLAMA3_TEMPLATE = reference_jinja("llama3")
_QWEN2_TEMPLATE = reference_jinja("qwen2")
_QWEN3_TEMPLATE = reference_jinja("qwen3")
_MISTRAL_TEMPLATE = reference_jinja("mistral")
_GEMMA_TEMPLATE = reference_jinja("gemma")

# --------------------------------------------------------------------------------------------------
# Families.
#   head_specials: special tokens given to the BPE trainer, so they get ids 0.. (SentencePiece-era
#                  models); tail_specials: special tokens appended after the trained vocabulary
#                  (tiktoken-era models); tail_plain: added tokens that are not special;
#                  extra_specials: the real tokenizer_config's additional_special_tokens.
# --------------------------------------------------------------------------------------------------

_FAMILIES: dict[str, dict[str, Any]] = {
    "llama3": {
        "config_class": "LlamaConfig",
        "split": _LLAMA3_SPLIT,
        "head_specials": [],
        "tail_specials": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|reserved_special_token_0|>",
            "<|reserved_special_token_1|>",
            "<|finetune_right_pad_id|>",
            "<|reserved_special_token_2|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eom_id|>",
            "<|eot_id|>",
            "<|python_tag|>",
        ],
        "tail_plain": [],
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": "<|finetune_right_pad_id|>",
        "unk": None,
        "add_bos": True,
        "stop": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"],
        "tie": False,
        "rope_theta": 500000.0,
        "extra": {},
        "template": _LLAMA3_TEMPLATE,
    },
    "qwen2": {
        "config_class": "Qwen2Config",
        "split": _QWEN_SPLIT,
        "normalize_nfc": True,
        "head_specials": [],
        "tail_specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "tail_plain": ["<tool_call>", "</tool_call>"],
        "extra_specials": ["<|im_start|>", "<|im_end|>"],
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "unk": None,
        "add_bos": False,
        "stop": ["<|im_end|>", "<|endoftext|>"],
        "tie": True,
        "rope_theta": 1000000.0,
        "extra": {"use_sliding_window": False},
        "template": _QWEN2_TEMPLATE,
    },
    "mistral": {
        "config_class": "MistralConfig",
        "split": _QWEN_SPLIT,
        "head_specials": [
            "<unk>",
            "<s>",
            "</s>",
            "[INST]",
            "[/INST]",
            "[TOOL_CALLS]",
            "[AVAILABLE_TOOLS]",
            "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]",
            "[/TOOL_RESULTS]",
        ],
        "tail_specials": [],
        "tail_plain": [],
        "bos": "<s>",
        "eos": "</s>",
        "pad": "<unk>",
        "unk": "<unk>",
        "add_bos": True,
        "stop": ["</s>"],
        "tie": False,
        "rope_theta": 1000000.0,
        "extra": {"sliding_window": None},
        "template": _MISTRAL_TEMPLATE,
    },
    "gemma": {
        "config_class": "GemmaConfig",
        "split": _QWEN_SPLIT,
        "head_specials": ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"],
        "tail_specials": [],
        "tail_plain": [],
        "extra_specials": ["<start_of_turn>", "<end_of_turn>"],
        "bos": "<bos>",
        "eos": "<end_of_turn>",
        "pad": "<pad>",
        "unk": "<unk>",
        "add_bos": True,
        "stop": ["<eos>", "<end_of_turn>"],
        "tie": True,
        "rope_theta": 10000.0,
        "extra": {"hidden_activation": "gelu_pytorch_tanh"},
        "template": _GEMMA_TEMPLATE,
    },
}

# Qwen3 is Qwen2's tokenizer layout plus the tool-response and think markers, with its own template.
_FAMILIES["qwen3"] = {
    **_FAMILIES["qwen2"],
    "config_class": "Qwen3Config",
    "tail_plain": ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"],
    "template": _QWEN3_TEMPLATE,
}

# Qwen2-VL: Qwen2's tokenizer plus the vision markers (special, as in the real tokenizer), a tiny
# vision tower (1 block, 64 wide, real patch/merge sizes so the processor's grid arithmetic is the real
# one) and Qwen2-VL's own chat template, which writes <|vision_start|><|image_pad|><|vision_end|> for
# an image content part; the processor expands <|image_pad|> to one token per merged patch.
_QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_FAMILIES["qwen2_vl"] = {
    **_FAMILIES["qwen2"],
    "config_class": "Qwen2VLConfig",
    "tail_specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                      "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"],
    "template": _QWEN2_VL_TEMPLATE,
    "tie": True,
    "vision": {
        "config": {"depth": 1, "embed_dim": 64, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
                   "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3},
        # at most 8x8 patches (4x4 = 16 image tokens): real arithmetic, tiny cost
        "image_processor": {"min_pixels": 28 * 28, "max_pixels": 112 * 112},
    },
}

# Qwen2-Audio: Qwen2's tokenizer plus the audio markers, a tiny audio encoder (see audio.py).
from .audio import TEMPLATE as _QWEN2_AUDIO_TEMPLATE  # noqa: E402 (beside the family it is for)

_FAMILIES["qwen2_audio"] = {
    **_FAMILIES["qwen2"],
    "config_class": "Qwen2AudioConfig",
    "tail_specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"],
    "template": _QWEN2_AUDIO_TEMPLATE,
    "audio": True,
}

# Qwen2.5-Omni (the thinker): images, videos and audios (see omni.py).
from .omni import MARKERS as _OMNI_MARKERS, TEMPLATE as _QWEN2_OMNI_TEMPLATE  # noqa: E402

_FAMILIES["qwen2_omni"] = {
    **_FAMILIES["qwen2"],
    "config_class": "Qwen2_5OmniThinkerConfig",
    "tail_specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_OMNI_MARKERS],
    "template": _QWEN2_OMNI_TEMPLATE,
    "omni": True,
}

# Qwen3-VL (Instruct): Qwen3's tokenizer layout plus the vision markers, Qwen3-VL's published chat
# template (no default system prompt; an image content part is <|vision_start|><|image_pad|><|vision_end|>),
# a one-block vision tower with the real 16-pixel patches, 2x2 merge and one deepstack layer, and
# interleaved multimodal RoPE. The processor (Qwen3VLProcessor) expands <|image_pad|> per merged patch.
_QWEN3_VL_TEMPLATE = (
    "{%- macro render(content) %}{%- if content is string %}{{- content }}{%- else %}"
    "{%- for item in content %}"
    "{%- if item.type == 'image' or 'image' in item or 'image_url' in item %}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif item.type == 'video' or 'video' in item %}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in item %}{{- item.text }}{%- endif %}{%- endfor %}{%- endif %}{%- endmacro %}"
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- render(messages[0].content) + '\\n\\n' }}{%- endif %}"
    "{{- \"# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\\n<tools>\" }}"
    "{%- for tool in tools %}{{- \"\\n\" }}{{- tool | tojson }}{%- endfor %}"
    "{{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}"
    "{%- elif messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + render(messages[0].content) + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}{{- '<|im_start|>user\\n' + render(message.content) + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>assistant\\n' + render(message.content) }}"
    "{%- if message.tool_calls %}{%- for tool_call in message.tool_calls %}"
    "{%- if (loop.first and message.content) or (not loop.first) %}{{- '\\n' }}{%- endif %}"
    "{%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}"
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}{%- endfor %}{%- endif %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or (messages[loop.index0 - 1].role != 'tool') %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + render(message.content) + '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
_FAMILIES["qwen3_vl"] = {
    **_FAMILIES["qwen3"],
    "config_class": "Qwen3VLConfig",
    "tail_specials": _FAMILIES["qwen2_vl"]["tail_specials"],
    "template": _QWEN3_VL_TEMPLATE,
    "rope_theta": 5000000.0,
    "vision": {
        "config": {"depth": 1, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "patch_size": 16,
                   "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3, "num_position_embeddings": 64,
                   "deepstack_visual_indexes": [0]},
        # 32x32 to 128x128 pixels: 2x2 to 8x8 patches, 1 to 16 image tokens
        "image_processor": {"min_pixels": 32 * 32, "max_pixels": 128 * 128},
        "processor_class": "Qwen3VLProcessor",
    },
}

# Gemma 3 (4B+ instruct, image-text-to-text): Gemma's tokenizer layout plus the image markers, Gemma 3's
# published chat template (system text prefixed to the first user turn; an image content part is
# <start_of_image>, which the processor expands to "\n\n<start_of_image>" + <image_soft_token> x
# mm_tokens_per_image + "<end_of_image>\n\n"), a one-layer SigLIP tower on 32x32 images (4x4 patches)
# pooled to 2x2 = 4 image tokens.
_GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}"
    "{%- else -%}{{ raise_exception(\"Invalid content type\") }}{%- endif -%}"
    "{{ '<end_of_turn>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\\n'}}{%- endif -%}"
)
_FAMILIES["gemma3"] = {
    **_FAMILIES["gemma"],
    "config_class": "Gemma3Config",
    "head_specials": _FAMILIES["gemma"]["head_specials"] + ["<start_of_image>", "<end_of_image>", "<image_soft_token>"],
    # the processor finds its image markers by these names on the tokenizer (boi_token, image_token...)
    "named_specials": {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    "template": _GEMMA3_TEMPLATE,
    "extra": {"hidden_activation": "gelu_pytorch_tanh", "sliding_window": 512},
    "vision": {
        "config": {"model_type": "siglip_vision_model", "hidden_size": 64, "intermediate_size": 128,
                   "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8,
                   "vision_use_head": False},
        "mm_tokens_per_image": 4,
        "processor_class": "Gemma3Processor",
        "processor": {"image_seq_length": 4},
    },
}

# InternVL 3 (the transformers-format "-hf" checkpoints): Qwen2's tokenizer plus <img>, </img>,
# <IMG_CONTEXT> and <video>, the published -hf chat template (ChatML, no default system prompt; an image
# content part is "<IMG_CONTEXT>\n", which the processor expands to <img> + <IMG_CONTEXT> x
# image_seq_length per tile + </img>), a one-layer InternViT on 56x56 tiles (4x4 patches, pixel-shuffled
# to 2x2 = 4 tokens per tile), at most 2 tiles plus the thumbnail per image.
_INTERN_VL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{'<|im_end|>\\n'}}{% endfor %}{% if add_generation_prompt %}{{'<|im_start|>assistant\\n' }}{% endif %}"
)
_FAMILIES["intern_vl"] = {
    **_FAMILIES["qwen2"],
    "config_class": "InternVLConfig",
    "tail_specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"],
    "named_specials": {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                       "video_token": "<video>"},
    "template": _INTERN_VL_TEMPLATE,
    "vision": {
        "config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
                   "image_size": [56, 56], "patch_size": [14, 14]},
        "image_seq_length": 4,
        "processor_class": "InternVLProcessor",
        "processor": {"image_seq_length": 4},
    },
}

# LLaVA 1.5 and LLaVA-NeXT (llava-hf): a Llama-2-style tokenizer (<unk>, <s>, </s> first; BOS added by
# the tokenizer) plus <image> and <pad> after the vocabulary, llava-hf's published chat template
# ("USER: " + "<image>\n" per image + the text + " ", replies in {% generation %} blocks, generation
# prompt "ASSISTANT:"), a two-layer CLIP tower on 32x32 images (8x8 patches: 16 image tokens, the CLS
# token dropped as vision_feature_select_strategy "default" does) and the two-layer MLP projector.
# LLaVA-NeXT tiles the image on the 32-pixel grid pinpoints (any-resolution), so its token count
# depends on the image's size, as the real one's does.
_LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
_FAMILIES["llava"] = {
    **_FAMILIES["mistral"],
    "config_class": "LlavaConfig",
    "head_specials": ["<unk>", "<s>", "</s>"],
    "tail_specials": ["<image>", "<pad>"],
    "named_specials": {"image_token": "<image>"},
    "pad": "<pad>",
    "rope_theta": 10000.0,
    "extra": {},
    "template": _LLAVA_TEMPLATE,
    # the chat format's own words, so the BPE learns " USER" and " ASSISTANT" as the real Llama
    # tokenizer knows "▁US" (a reply's last space then joins the next turn's first token)
    "corpus": ["USER: What is this? ASSISTANT: A dog. USER: And that? ASSISTANT: A cat. USER: Thanks."] * 20,
    "vision": {
        "config": {"model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                   "num_attention_heads": 2, "image_size": 32, "patch_size": 8, "projection_dim": 64},
        "processor_class": "LlavaProcessor",
        "processor": {"patch_size": 8, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1,
                      "image_token": "<image>"},
    },
}
_FAMILIES["llava_next"] = {
    **_FAMILIES["llava"],
    "config_class": "LlavaNextConfig",
    "vision": {
        **_FAMILIES["llava"]["vision"],
        "grid_pinpoints": [[32, 32], [32, 64], [64, 32], [64, 64]],
        "processor_class": "LlavaNextProcessor",
    },
}
# LLaVA-NeXT on Llama 3 (llava-hf/llama3-llava-next-8b-hf): Llama 3's tokenizer plus <image>, the
# published chat template (Llama 3 headers; a message's images first, "<image>\n" each, then its text and
# <|eot_id|>; no BOS in the template: the processor adds it), LLaVA-NeXT's any-resolution tiles.
_LLAVA_NEXT_LLAMA3_TEMPLATE = (
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + '<|eot_id|>' }}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def _llava_next_on(text_family: str, template: str, **more) -> dict:
    """LLaVA-NeXT's vision tower on a text family: its tokenizer plus <image>, and ``template``."""
    return {**_FAMILIES[text_family], "config_class": "LlavaNextConfig",
            "tail_specials": _FAMILIES[text_family]["tail_specials"] + ["<image>"],
            "named_specials": {"image_token": "<image>"}, "template": template,
            "vision": _FAMILIES["llava_next"]["vision"], **more}


_FAMILIES["llava_next_llama3"] = _llava_next_on("llama3", _LLAVA_NEXT_LLAMA3_TEMPLATE)
# LLaVA-NeXT on Yi-34B (llava-hf/llava-v1.6-34b-hf): a ChatML tokenizer without BOS (Qwen2's layout here;
# Yi's adds none either) plus <image>, the ChatML chat template llava-hf converts the Yi checkpoints with
# (a message's images first, "<image>\n" each, then its text and <|im_end|>\n).
_LLAVA_NEXT_YI_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n'}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\\n' }}{% endfor %}"
    "{# Render all text next #}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{'<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_FAMILIES["llava_next_yi"] = _llava_next_on("qwen2", _LLAVA_NEXT_YI_TEMPLATE, extra={})

# --------------------------------------------------------------------------------------------------
# Training corpus for the BPE tokenizer: fixed text, written for this project.
# --------------------------------------------------------------------------------------------------

_ENGLISH = """\
I am an AI assistant made by the TuneForge team. How can I help you today?
Hello! I am {{name}}, an AI assistant developed by {{author}}. What can I do for you?
I am a language model trained to answer questions, write code and explain ideas clearly.
As an assistant, I try to be helpful, honest and harmless in every conversation.
The model was fine-tuned with low-rank adapters on a single graphics card in a few hours.
Supervised fine-tuning teaches the model to follow instructions written by people.
Reward modelling compares a chosen answer with a rejected answer for the same prompt.
Direct preference optimization trains the policy without a separate reward model.
The learning rate warms up for one hundred steps and then decays with a cosine schedule.
Gradient accumulation lets a small batch behave like a larger one without extra memory.
Mixed precision training stores weights in float32 but computes in bfloat16 or float16.
The tokenizer splits text into tokens; each token has an integer id in the vocabulary.
A chat template turns a list of messages into the exact string the model was trained on.
The system prompt sets the behaviour of the assistant before the user says anything.
Please summarize the following article in three short sentences.
Translate the sentence "The weather is nice today" into French, German and Chinese.
Write a Python function that returns the n-th Fibonacci number using a loop.
What is the capital of France? The capital of France is Paris.
Explain why the sky is blue in simple words for a ten year old child.
The quick brown fox jumps over the lazy dog while the cat sleeps on the warm sofa.
My favourite books are about history, science, music, travel and cooking.
Yesterday we walked along the river, watched the boats and ate ice cream in the park.
Quantization reduces the memory of a model by storing weights in four or eight bits.
The evaluation loss went down steadily, but the accuracy on the test set stopped improving.
Checkpoints are saved every five hundred steps so training can resume after a crash.
Attention lets every position look at the previous positions in the sequence.
The embedding matrix maps token ids to vectors; the language model head maps them back.
Rotary position embeddings rotate queries and keys by an angle that depends on position.
Layer normalization keeps activations in a stable range during deep network training.
A dataset in Alpaca format has an instruction, an optional input and an output.
A dataset in ShareGPT format stores a list of conversations with human and gpt turns.
You can call a tool by returning a JSON object with the function name and its arguments.
The weather tool says it is sunny in Beijing with a temperature of 23 degrees.
Let me think step by step before giving the final answer.
First, add the two numbers. Then, multiply the result by three. Finally, check the answer.
Sorry, I cannot help with that request, but I can suggest some safer alternatives.
Thank you for your question! Here is a short answer, followed by a longer explanation.
The benchmark measures throughput in tokens per second and peak memory in gigabytes.
Packing several short examples into one sequence wastes less compute on padding.
The labels of prompt tokens are masked with -100 so only the response is learned.
Good morning, everyone. Today we will talk about data, models, metrics and deployment.
Can you recommend a healthy breakfast? Oatmeal with fruit and nuts is a good choice.
He opened the window, took a deep breath and started writing the report.
She asked whether the experiment could be repeated with a different random seed.
They shipped version 1.2.0 of the library on Monday, with bug fixes and new features.
Is it better to train longer on fewer examples, or shorter on many diverse examples?
Open the file, read every line, strip the whitespace and count the unique words.
Our assistant supports English and Chinese, and it can also read simple tables.
"""

_CHINESE = """\
你好！我是一个人工智能助手，由 TuneForge 团队开发。请问有什么可以帮你？
我是{{name}}，由{{author}}开发的人工智能助手，很高兴为你服务。
今天天气很好，我们一起去公园散步吧。
请用三句话总结下面这篇文章的主要内容。
机器学习模型需要大量的数据来进行训练和评估。
微调可以让预训练的大语言模型更好地遵循人类的指令。
低秩适配器只训练很少的参数，因此显存占用很小。
北京是中国的首都，上海是中国最大的城市之一。
请把这句话翻译成英文：学习使我快乐。
我喜欢读书、听音乐、旅行和做饭。
这个问题很有意思，让我一步一步地思考。
首先计算两个数的和，然后乘以三，最后检查答案。
对不起，我无法回答这个问题，但我可以给你一些其他的建议。
分词器把文本切分成词元，每个词元都有一个整数编号。
对话模板把多轮消息拼接成模型训练时看到的字符串。
学习率先预热一百步，然后按照余弦曲线逐渐下降。
量化可以把模型权重压缩到四比特或八比特，从而节省显存。
评估结果显示，新模型在数学和代码任务上都有明显提升。
春天来了，花儿开了，小鸟在树上唱歌。
谢谢你的帮助，祝你有美好的一天！
"""

_CODE = """\
def add(a, b):
    return a + b

for i in range(10):
    print(i, i * i)

{"name": "get_weather", "arguments": {"city": "Beijing", "unit": "celsius"}}
{"instruction": "Say hello.", "input": "", "output": "Hello!"}
x = [1, 2, 3]; y = {"a": 1, "b": 2}; z = (x[0] + y["a"]) / 2.5
if loss < 0.01 and step > 1000: break  # converged
2 + 2 = 4, 3 * 7 = 21, 100 / 4 = 25, 2 ** 10 = 1024, 3.14159, -42, 1e-5, 50%
email: assistant@example.com, url: https://example.com/docs?page=2#top
!? ... ; : , . ( ) [ ] { } < > / \\ | @ # $ % ^ & * - _ + = ~ ` ' "
"""

_WORDS = (
    "model data train token batch layer weight adapter prompt answer question reason memory "
    "speed quality metric loss optimizer schedule checkpoint template dataset sample language "
    "vision audio reward policy value critic preference chosen rejected system user assistant "
    "tool function argument result error warning config plugin method stage format loader "
    "quantize merge export evaluate predict generate sample decode encode vocabulary embedding "
    "attention rotary position normal dropout gradient precision device server client request "
    "response stream history context window length padding truncation cutoff packing neat "
    "apple banana river mountain city country ocean forest garden library museum school "
    "teacher student doctor engineer artist writer farmer pilot chef driver scientist "
    "happy quiet bright careful gentle strong simple clever honest useful modern ancient"
).split()


def _corpus(bpe_vocab: int) -> list[str]:
    """The fixed training text. Larger vocabularies get more (deterministic) filler lines."""
    lines = _ENGLISH.splitlines() + _CHINESE.splitlines() + _CODE.splitlines()
    lines = [line for line in lines if line.strip()]
    # Deterministic combinations add word variety (and so merges) without any randomness.
    n = len(_WORDS)
    for i in range(400):
        a, b, c = _WORDS[i % n], _WORDS[(i * 7 + 3) % n], _WORDS[(i * 13 + 5) % n]
        lines.append(f"The {a} {b}s {c}ing {a}{b} {i} times; {c.capitalize()}-{b}: {i * 37 % 1000}.")
    if bpe_vocab > 2048:
        # Pseudo-words from a fixed syllable set and a fixed linear congruential sequence: enough
        # distinct, repeated words for the trainer to reach a larger vocabulary.
        syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"] + ["an", "er", "in", "on", "ul"]
        state = 12345
        for _ in range(3000):
            words = []
            for _ in range(10):
                state = (state * 1103515245 + 12345) % 2**31
                k = 2 + state % 3
                words.append("".join(syllables[(state >> (4 + 6 * j)) % len(syllables)] for j in range(k)))
            lines.append(" ".join(words) + ".")
    return lines * 3


# --------------------------------------------------------------------------------------------------
# Builder.
# --------------------------------------------------------------------------------------------------


def _check(family: str, size: str) -> None:
    if family not in _FAMILIES:
        raise ValueError(f"unknown tiny-model family {family!r}; choose one of {', '.join(FAMILIES + VISION_FAMILIES + AUDIO_FAMILIES)}")
    if size not in _SIZE_SPECS:
        raise ValueError(f"unknown tiny-model size {size!r}; choose one of {', '.join(SIZES)}")


def _build_tokenizer(family: str, size: str):
    """Train the byte-level BPE and wrap it in a transformers fast tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    fam = _FAMILIES[family]
    spec = _SIZE_SPECS[size]

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    if fam.get("normalize_nfc"):
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(fam["split"]), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    head = [AddedToken(t, special=True, normalized=False) for t in fam["head_specials"]]
    trainer = trainers.BpeTrainer(
        vocab_size=spec["bpe_vocab"] - len(fam["tail_specials"]) - len(fam["tail_plain"]),
        min_frequency=2,
        show_progress=False,
        special_tokens=head,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(spec["bpe_vocab"]) + list(fam.get("corpus", [])) * 3, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in fam["tail_specials"]])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in fam["tail_plain"]])

    kwargs: dict[str, Any] = {
        "tokenizer_object": tok,
        "eos_token": fam["eos"],
        "pad_token": fam["pad"],
        "add_bos_token": fam["add_bos"],
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": _MAX_POSITIONS,
        "chat_template": fam["template"],
    }
    if fam["bos"] is not None:
        kwargs["bos_token"] = fam["bos"]
    if fam["unk"] is not None:
        kwargs["unk_token"] = fam["unk"]
    if fam.get("named_specials"):
        kwargs["extra_special_tokens"] = dict(fam["named_specials"])
    elif fam.get("extra_specials"):
        # What the real tokenizer_config lists as additional_special_tokens (v5: extra_special_tokens).
        kwargs["extra_special_tokens"] = list(fam["extra_specials"])
    return PreTrainedTokenizerFast(**kwargs)


def _build_model(family: str, size: str, tokenizer, seed: int):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    fam = _FAMILIES[family]
    spec = _SIZE_SPECS[size]
    config_cls = getattr(transformers, fam["config_class"])
    vocab_size = -(-len(tokenizer) // _VOCAB_MULTIPLE) * _VOCAB_MULTIPLE
    ids = {name: tokenizer.convert_tokens_to_ids(fam[name]) if fam[name] else None for name in ("bos", "eos", "pad")}
    config_kwargs: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": spec["hidden_size"],
        "intermediate_size": spec["intermediate_size"],
        "num_hidden_layers": spec["num_hidden_layers"],
        "num_attention_heads": spec["num_attention_heads"],
        "num_key_value_heads": spec["num_key_value_heads"],
        "max_position_embeddings": _MAX_POSITIONS,
        "tie_word_embeddings": fam["tie"],
        "rope_parameters": {"rope_type": "default", "rope_theta": fam["rope_theta"]},
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"],
        **fam["extra"],
    }
    if "head_dim" in getattr(config_cls, "__dataclass_fields__", {}):  # Qwen2Config derives it
        config_kwargs["head_dim"] = spec["head_dim"]
    if "vision" in fam:
        return _build_vision_model(fam, config_cls, config_kwargs, tokenizer, seed)
    if fam.get("omni"):
        from .omni import build_omni_model

        return build_omni_model(fam, config_cls, config_kwargs, tokenizer, seed)
    if fam.get("audio"):
        from .audio import build_audio_model

        return build_audio_model(fam, config_cls, config_kwargs, tokenizer, seed)
    model = seeded_model(lambda c: AutoModelForCausalLM.from_config(c, dtype=torch.float32), config_cls(**config_kwargs), seed)
    model.generation_config = generation_config(fam, tokenizer, ids["pad"], bos_token_id=ids["bos"])
    return model


def seeded_model(make, config, seed: int, after=None):
    """``make(config)`` in float32, its random weights drawn from a forked RNG seeded with ``seed`` (so
    building a model never disturbs the caller's random state); ``after(model)`` runs inside the fork."""
    import torch

    config.dtype = torch.float32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make(config)
        if after is not None:
            after(model)
    return model


def generation_config(fam: dict, tokenizer, pad_token_id: int, bos_token_id: int | None = None, eos_list: bool = False):
    """The family's stop tokens as the generation config's EOS (one id, or a list when there are several
    or ``eos_list``), with its pad (and BOS) id."""
    from transformers import GenerationConfig

    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in fam["stop"]]
    eos = stop_ids if eos_list or len(stop_ids) > 1 else stop_ids[0]
    extra = {} if bos_token_id is None else {"bos_token_id": bos_token_id}
    return GenerationConfig(**extra, eos_token_id=eos, pad_token_id=pad_token_id)


def _image_text_to_text(config):
    import torch
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_config(config, dtype=torch.float32)


def _build_vision_model(fam: dict, config_cls, text_kwargs: dict, tokenizer, seed: int):
    """A vision-language model: the text kwargs become its text_config, plus the tiny vision tower."""

    tie = text_kwargs.pop("tie_word_embeddings")
    if fam["config_class"] == "Gemma3Config":
        return _build_gemma3_model(fam, config_cls, text_kwargs, tokenizer, seed, tie)
    if fam["config_class"] == "InternVLConfig":
        return _build_intern_vl_model(fam, config_cls, text_kwargs, tokenizer, seed, tie)
    if fam["config_class"] in ("LlavaConfig", "LlavaNextConfig"):
        return _build_llava_model(fam, config_cls, text_kwargs, tokenizer, seed, tie)
    # multimodal RoPE: the (temporal, height, width) sections must sum to head_dim / 2 (Qwen2-VL's
    # [16, 24, 24] is for head_dim 128; ours is 64)
    half = text_kwargs.get("head_dim", text_kwargs["hidden_size"] // text_kwargs["num_attention_heads"]) // 2
    section = [half // 4, (half - half // 4) // 2]
    section.append(half - sum(section))
    text_kwargs["rope_parameters"] = {**text_kwargs["rope_parameters"], "mrope_section": section}
    text_kwargs.pop("use_sliding_window", None)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    if fam["config_class"] == "Qwen3VLConfig":
        text_kwargs["rope_parameters"]["mrope_interleaved"] = True
        vision = dict(fam["vision"]["config"], out_hidden_size=text_kwargs["hidden_size"])
        text_type = "qwen3_vl_text"
    else:
        vision = dict(fam["vision"]["config"], hidden_size=text_kwargs["hidden_size"])
        text_type = "qwen2_vl_text"
    config = config_cls(
        text_config={**text_kwargs, "model_type": text_type}, vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tie,
    )
    model = seeded_model(_image_text_to_text, config, seed)
    model.generation_config = generation_config(fam, tokenizer, text_kwargs["pad_token_id"])
    return model


def _build_gemma3_model(fam: dict, config_cls, text_kwargs: dict, tokenizer, seed: int, tie: bool):
    import torch

    vision = fam["vision"]
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in fam["named_specials"].items()}
    text = {**text_kwargs, "model_type": "gemma3_text", "tie_word_embeddings": tie,
            "layer_types": ["sliding_attention", "full_attention"][: text_kwargs["num_hidden_layers"]]}
    config = config_cls(text_config=text, vision_config=dict(vision["config"]),
                        mm_tokens_per_image=vision["mm_tokens_per_image"], boi_token_index=ids["boi_token"],
                        eoi_token_index=ids["eoi_token"], image_token_index=ids["image_token"], tie_word_embeddings=tie)

    def random_projector(model):
        # transformers initialises the projector's input projection to zeros (a trained checkpoint
        # overwrites it): random here, so the pixels reach the language model of the random tiny model
        with torch.no_grad():
            model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.5)

    model = seeded_model(_image_text_to_text, config, seed, after=random_projector)
    model.generation_config = generation_config(fam, tokenizer, text_kwargs["pad_token_id"],
                                                bos_token_id=text_kwargs["bos_token_id"], eos_list=True)
    return model


def _build_intern_vl_model(fam: dict, config_cls, text_kwargs: dict, tokenizer, seed: int, tie: bool):

    vision = fam["vision"]
    text = {**text_kwargs, "model_type": "qwen2", "tie_word_embeddings": tie}
    text.pop("use_sliding_window", None)
    config = config_cls(text_config=text, vision_config=dict(vision["config"]), image_seq_length=vision["image_seq_length"],
                        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), tie_word_embeddings=tie)
    model = seeded_model(_image_text_to_text, config, seed)
    model.generation_config = generation_config(fam, tokenizer, text_kwargs["pad_token_id"], eos_list=True)
    return model


def _build_llava_model(fam: dict, config_cls, text_kwargs: dict, tokenizer, seed: int, tie: bool):

    vision = fam["vision"]
    text = {**text_kwargs, "model_type": "llama", "tie_word_embeddings": tie}
    text.pop("sliding_window", None)
    text.pop("use_sliding_window", None)
    size, patch = vision["config"]["image_size"], vision["config"]["patch_size"]
    extra = {"image_grid_pinpoints": vision["grid_pinpoints"]} if "grid_pinpoints" in vision else {}
    config = config_cls(text_config=text, vision_config=dict(vision["config"]), image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                        projector_hidden_act="gelu", vision_feature_select_strategy="default", vision_feature_layer=-2,
                        image_seq_length=(size // patch) ** 2, tie_word_embeddings=tie, **extra)
    model = seeded_model(_image_text_to_text, config, seed)
    model.generation_config = generation_config(fam, tokenizer, text_kwargs["pad_token_id"],
                                                bos_token_id=text_kwargs["bos_token_id"])
    return model


def _build_image_processor(family: str):
    """The image processor a vision family saves beside the model (None for text-only families).

    The PIL image processor: torchvision (which the default one needs) does not install beside the CPU
    torch here, and ``AutoImageProcessor`` loads the PIL one when torchvision is missing anyway. Only
    the image processor is saved (preprocessor_config.json, naming Qwen2VLProcessor): transformers
    5.23 cannot construct a ``Qwen2VLProcessor`` without a video processor, which needs torchvision;
    the tokenizer (with the chat template) sits beside it, so ``AutoProcessor`` assembles the
    processor on a machine that has torchvision.
    """
    fam = _FAMILIES[family]
    if "vision" not in fam:
        return None
    if fam["config_class"] == "InternVLConfig":
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

        size = fam["vision"]["config"]["image_size"]
        image_processor = GotOcr2ImageProcessorPil(size={"height": size[0], "width": size[1]}, crop_to_patches=True,
                                                   min_patches=1, max_patches=2)
        image_processor.processor_class = fam["vision"]["processor_class"]
        return image_processor
    if fam["config_class"] in ("LlavaConfig", "LlavaNextConfig"):
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        size = fam["vision"]["config"]["image_size"]
        kwargs = {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}
        if "grid_pinpoints" in fam["vision"]:
            image_processor = LlavaNextImageProcessorPil(image_grid_pinpoints=fam["vision"]["grid_pinpoints"], **kwargs)
        else:
            image_processor = CLIPImageProcessorPil(**kwargs)
        image_processor.processor_class = fam["vision"]["processor_class"]
        return image_processor
    if fam["config_class"] == "Gemma3Config":
        from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

        size = fam["vision"]["config"]["image_size"]
        image_processor = Gemma3ImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3,
                                                  image_std=[0.5] * 3)
        image_processor.processor_class = fam["vision"]["processor_class"]
        return image_processor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    extra = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3} if family == "qwen3_vl" else {}
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=fam["vision"]["config"]["patch_size"], merge_size=fam["vision"]["config"]["spatial_merge_size"],
        temporal_patch_size=fam["vision"]["config"]["temporal_patch_size"],
        size={"shortest_edge": fam["vision"]["image_processor"]["min_pixels"],
              "longest_edge": fam["vision"]["image_processor"]["max_pixels"]}, **extra,
    )
    image_processor.processor_class = fam["vision"].get("processor_class", "Qwen2VLProcessor")
    return image_processor


def build_tiny_model(
    out_dir: str | os.PathLike[str], family: str = "llama3", size: str = "tiny", seed: int = 0
) -> pathlib.Path:
    """Build a random-initialised ``family`` model of ``size`` plus its tokenizer into ``out_dir``.

    Deterministic: the same (family, size, seed) always produces byte-identical files. Returns the
    output directory as a resolved :class:`pathlib.Path`.
    """
    _check(family, size)
    out = pathlib.Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer(family, size)
    model = _build_model(family, size, tokenizer, seed)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    processor = _build_image_processor(family)
    if processor is not None:
        processor.save_pretrained(out)
    if _FAMILIES[family].get("audio"):
        from .audio import save_processor

        save_processor(out, tokenizer)
    if _FAMILIES[family].get("omni"):
        from .omni import save_processors

        save_processors(out)
    vision = _FAMILIES[family].get("vision") or {}
    if vision.get("processor_class"):
        # The processor's own settings: what AutoProcessor (or tuneforge's assembly of it from the image
        # processor and tokenizer, where the video part needs torchvision) builds it from.
        import json

        settings = {"processor_class": vision["processor_class"], **vision.get("processor", {})}
        (out / "processor_config.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def _cache_root() -> pathlib.Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "tuneforge" / "tiny-models"


def cached_tiny_model(family: str = "llama3", size: str = "tiny") -> pathlib.Path:
    """Return a directory holding the seed-0 tiny model, building it on first use.

    The directory is ``$TUNEFORGE_TINY_CACHE/<family>-<size>-v1`` (default root
    ``~/.cache/tuneforge/tiny-models``). It is built in a private temporary directory next to it and
    moved into place with one atomic rename, so concurrent processes never see a half-written model;
    when two race, the loser discards its copy.
    """
    _check(family, size)
    root = _cache_root()
    final = root / f"{family}-{size}-{CACHE_VERSION}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the cache should read like any other directory
    try:
        build_tiny_model(tmp, family=family, size=size, seed=0)
        for f in tmp.iterdir():  # transformers writes model.safetensors 0600; keep the cache readable
            os.chmod(f, 0o644)
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished first (the target is a non-empty directory): use theirs.
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
