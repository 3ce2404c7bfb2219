"""Built-in inference engines (``infer_backend``): huggingface, vllm, sglang."""
