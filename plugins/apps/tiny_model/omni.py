"""The tiny Qwen2.5-Omni thinker (the text-generating part of Qwen2.5-Omni; no talker): the builder's
Qwen2 text model as its text_config, a one-block Qwen2.5-VL-style vision encoder and a one-layer audio
encoder (real patch/merge sizes, 128 mel bins and 1500 positions, so the token arithmetic is the real
one). Beside it: one preprocessor_config.json holding the PIL image processor's settings and Whisper's
feature extractor's, as the real checkpoint has it (transformers 5.23 cannot build the Omni processor
without torchvision's video processor)."""

from __future__ import annotations

import json

MARKERS = ("<|vision_bos|>", "<|vision_eos|>", "<|audio_bos|>", "<|audio_eos|>", "<|IMAGE|>", "<|VIDEO|>", "<|AUDIO|>")

#: Qwen2.5-Omni's chat-template shape: content parts become the media markers.
TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
    "perceiving auditory and visual inputs, as well as generating text and speech.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'video' %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif content['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

VISION = {"depth": 1, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2, "patch_size": 14,
          "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [0]}
AUDIO = {"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
         "num_mel_bins": 128, "max_source_positions": 1500, "n_window": 100}


def build_omni_model(fam: dict, config_cls, text_kwargs: dict, tokenizer, seed: int):
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    text_kwargs = dict(text_kwargs)
    text_kwargs.pop("use_sliding_window", None)
    tie = text_kwargs.pop("tie_word_embeddings", False)
    half = text_kwargs.get("head_dim", text_kwargs["hidden_size"] // text_kwargs["num_attention_heads"]) // 2
    section = [half // 4, (half - half // 4) // 2]
    section.append(half - sum(section))
    text_kwargs["rope_parameters"] = {**text_kwargs["rope_parameters"], "mrope_section": section}
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in MARKERS}
    hidden = text_kwargs["hidden_size"]
    config = config_cls(
        audio_config={**AUDIO, "output_dim": hidden}, vision_config={**VISION, "out_hidden_size": hidden},
        text_config=text_kwargs, audio_token_index=ids["<|AUDIO|>"], image_token_index=ids["<|IMAGE|>"],
        video_token_index=ids["<|VIDEO|>"], audio_start_token_id=ids["<|audio_bos|>"],
        audio_end_token_id=ids["<|audio_eos|>"], vision_start_token_id=ids["<|vision_bos|>"],
        vision_end_token_id=ids["<|vision_eos|>"], tie_word_embeddings=tie,
    )
    from .builder import generation_config, seeded_model

    model = seeded_model(Qwen2_5OmniThinkerForConditionalGeneration, config, seed)
    model.generation_config = generation_config(fam, tokenizer, text_kwargs["pad_token_id"])
    return model


def save_processors(out) -> None:
    """The image processor (at most 112x112 pixels: 8x8 patches) and Whisper's feature extractor, in one
    preprocessor_config.json (each Auto class reads its own keys)."""
    from transformers import WhisperFeatureExtractor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    image = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                     size={"shortest_edge": 28 * 28, "longest_edge": 112 * 112})
    audio = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000)
    merged = {**json.loads(audio.to_json_string()), **json.loads(image.to_json_string())}
    merged["feature_extractor_type"] = "WhisperFeatureExtractor"
    merged["processor_class"] = "Qwen2_5OmniProcessor"
    (out / "preprocessor_config.json").write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n", encoding="utf-8")
