"""The tiny Qwen2-Audio: the builder's Qwen2 text model as its text_config, a one-layer 32-wide Whisper-style
audio encoder (the real 128 mel bins and 1500 positions, so the token arithmetic is the real one), and
Whisper's feature extractor and Qwen2-Audio's processor saved beside it (they need no torchvision)."""

from __future__ import annotations

AUDIO_MARKERS = ("<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>")

#: Qwen2-Audio's own chat template (an audio content part: "Audio N: <|audio_bos|><|AUDIO|><|audio_eos|>\n").
TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content or content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

ENCODER = {"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
           "num_mel_bins": 128, "max_source_positions": 1500}


def build_audio_model(fam: dict, config_cls, text_kwargs: dict, tokenizer, seed: int):
    from transformers import Qwen2AudioForConditionalGeneration

    text_kwargs = dict(text_kwargs)
    text_kwargs.pop("use_sliding_window", None)
    config = config_cls(audio_config=dict(ENCODER), text_config={**text_kwargs, "model_type": "qwen2"},
                        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"))
    config.tie_word_embeddings = text_kwargs.get("tie_word_embeddings", False)
    from .builder import generation_config, seeded_model

    model = seeded_model(Qwen2AudioForConditionalGeneration, config, seed)
    model.generation_config = generation_config(fam, tokenizer, text_kwargs["pad_token_id"])
    return model


def save_processor(out, tokenizer) -> None:
    """Whisper's log-mel feature extractor (128 bins, 16 kHz, 30 s) and the Qwen2-Audio processor."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16000)
    extractor.save_pretrained(out)  # preprocessor_config.json, as the real checkpoints have it
    Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=tokenizer, chat_template=TEMPLATE).save_pretrained(out)
