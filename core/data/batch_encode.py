"""Many texts to token ids in one call, exactly as one ``tokenizer.encode(text, add_special_tokens=False)``
per text would give them (the batched SFT path of :mod:`tuneforge.data.tokenize`, issue 20).

A fast tokenizer encodes a list in Rust, in parallel; going through transformers' ``__call__`` then
costs a Python dict per text (offsets, masks). When nothing in transformers would change the ids (the
tokenizer class encodes with transformers' own Rust-backed path, the backend has no truncation or
padding set, and special tokens are handled as the wrapper would), the backend's ``encode_batch_fast``
(no offsets) is called directly; otherwise the wrapper's batched call. Slow (Python) tokenizers are
called once per text.
"""

from __future__ import annotations


def _direct_backend(tokenizer):
    """The Rust tokenizer to call directly, or None when only the transformers wrapper is exact."""
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # another transformers layout: the wrapper's batched call
        return None
    cls = type(tokenizer)
    if not isinstance(tokenizer, TokenizersBackend):
        return None
    same_path = (cls._encode_plus is TokenizersBackend._encode_plus and cls.encode is PreTrainedTokenizerBase.encode
                 and cls.__call__ is PreTrainedTokenizerBase.__call__)
    backend = getattr(tokenizer, "_tokenizer", None)
    if not same_path or backend is None or not hasattr(backend, "encode_batch_fast"):
        return None
    if backend.truncation is not None or backend.padding is not None:
        return None
    if bool(backend.encode_special_tokens) != bool(getattr(tokenizer, "split_special_tokens", False)):
        return None
    return backend


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """``[tokenizer.encode(t, add_special_tokens=False) for t in texts]``, in as few calls as possible."""
    if not texts:
        return []
    if not getattr(tokenizer, "is_fast", False):
        return [tokenizer.encode(text, add_special_tokens=False) for text in texts]
    backend = _direct_backend(tokenizer)
    if backend is not None:
        return [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]
