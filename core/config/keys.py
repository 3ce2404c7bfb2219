"""The config keys the core owns: model, data, generation, export, evaluation and run selection.

Names are LLaMA-Factory's, so its YAML files parse unchanged. Keys a plugin owns (``lora_rank``,
``pref_beta``, ...) are declared by that plugin's spec instead; keys of Hugging Face's
TrainingArguments pass through (see hf_training_args.py).

``effective=False`` marks a key accepted for compatibility that this version does not act on yet;
`tuneforge check` warns when a config sets one, so nothing is ignored silently.
"""

from __future__ import annotations

from ..specs import ConfigKey

_STR_OR_LIST = (str, list)


def _k(name, type_, default=None, doc="", choices=None, effective=True, **limits):
    """``limits``: ConfigKey's min, max, min_open, max_open, special, path and excludes."""
    return ConfigKey(name=name, type=type_, default=default, doc=doc, choices=choices, effective=effective, **limits)


RUN_KEYS = (
    # The defaults of the selection keys come from tuneforge.plugins.DEFAULT_SELECTIONS.
    _k("stage", str, None, "Training stage plugin to run (`tuneforge plugins --kind stage`)."),
    _k("finetuning_type", str, None, "Fine-tuning method plugin (`tuneforge plugins --kind method`)."),
    _k("model_loader", str, None, "Model loader plugin."),
    _k("disable_plugins", _STR_OR_LIST, None,
       "Plugins to block: an entry-point or module name, a plugin name, or kind:name (comma list)."),
    _k("overwrite_output_dir", bool, False,
       "Start afresh in a non-empty output_dir instead of resuming from its last checkpoint."),
    _k("plot_loss", bool, False, "Write training_loss.png (and training_eval_loss.png) to output_dir."),
    _k("warmup_ratio", (int, float), None,
       "Fraction of the training steps used for learning-rate warmup (passed to the trainer as warmup_steps).", min=0, max=1),
    _k("pure_bf16", bool, False, "Load and train the weights in bf16 without fp32 master copies or autocast.", excludes=("fp16",)),
    _k("compute_accuracy", bool, False,
       "sft: add eval_accuracy, the share of target tokens the model predicts exactly (greedy), to evaluation."),
    _k("disable_shuffling", bool, False, "Do not shuffle the training set (train_sampling_strategy: sequential)."),
    _k("early_stopping_steps", int, None,
       "Stop when metric_for_best_model (default eval_loss) has not improved for this many evaluations.", min=1),
    _k("padding_free", bool, None,
       "Train pt/sft batches without pad tokens: a batch's rows are concatenated into one row whose position ids "
       "restart per row, attention kept within each row, so losses equal the padded batch's. Unset: on where the "
       "model supports it exactly (see docs/training.md); false: pad as LLaMA-Factory does."),
    _k("fused_loss", bool, None,
       "pt/sft: compute the LM head and cross-entropy together, a chunk of target rows at a time, so the full "
       "logits never exist (the plain loss to float rounding). Unset: on for vocabularies of 8k tokens or more "
       "where the model allows it; false: the model's own loss."),
    _k("release_cpu_memory", bool, None,
       "Training on CPU (Linux, glibc): the tensor buffers of 1 MiB or more that the forward makes (the "
       "activations kept for backward) get their own memory mapping, returned to the system when freed, "
       "instead of leaving holes in the heap, so peak RSS follows the live tensors; steps get somewhat slower. "
       "Unset: on where transparent huge pages exist (see docs/training.md); false: the C library's default."),
    _k("group_by_length", bool, False,
       "Batch rows of similar length together (train_sampling_strategy: group_by_length): less padding, "
       "a less random order."),
    _k("include_effective_tokens_per_second", bool, False,
       "Add effective_tokens_per_sec (non-pad tokens per second of training) to the train metrics."),
    _k("use_adam_mini", bool, False, "Adam-mini optimizer: selects the adam_mini method (full or freeze tuning)."),
    _k("use_muon", bool, False, "Muon optimizer: selects the muon method (full or freeze tuning)."),
    _k("freeze_vision_tower", bool, True, "Multimodal models: keep the vision tower frozen."),
    _k("freeze_multi_modal_projector", bool, True, "Multimodal models: keep the projector frozen."),
    _k("freeze_language_model", bool, False, "Multimodal models: freeze the language model (not its LoRA adapters)."),
    _k("use_swanlab", bool, False, "Log to SwanLab (adds swanlab to report_to; needs `pip install swanlab`)."),
    _k("swanlab_project", str, "tuneforge", "SwanLab project name."),
    _k("swanlab_workspace", str, None, "SwanLab workspace (organisation); your own when unset."),
    _k("swanlab_run_name", str, None, "SwanLab experiment name; run_name wins when both are set."),
    _k("swanlab_mode", str, "cloud", "SwanLab mode: cloud (upload), local (files only), offline or disabled.",
       choices=("cloud", "local", "offline", "disabled")),
    _k("swanlab_api_key", str, None, "SwanLab API key (else swanlab's own login)."),
    _k("swanlab_logdir", str, None, "Folder for SwanLab's local files."),
)

MODEL_KEYS = (
    _k("model_name_or_path", str, None, "Local folder or hub id of the base model.", path="model"),
    _k("adapter_name_or_path", _STR_OR_LIST, None, "Adapter folder(s) to load (comma list to stack)."),  # checked whole by config/adapters.py
    _k("adapter_folder", str, None, "Subfolder of each adapter_name_or_path that holds the adapter (PEFT's subfolder)."),
    _k("cache_dir", str, None, "Where downloaded models are cached.", path="output"),
    _k("use_fast_tokenizer", bool, True, "Use the fast (Rust) tokenizer."),
    _k("resize_vocab", bool, False,
       "Grow the embeddings to the tokenizer's vocabulary (implied by new tokens); adapters then train and save them."),
    _k("split_special_tokens", bool, False,
       "Tokenise special tokens as plain text. Not applied: tuneforge tokenises each rendered turn whole, so the "
       "template's own control tokens (<|eot_id|>, ...) would be split as well.", effective=False),
    _k("add_tokens", _STR_OR_LIST, None, "Plain tokens to add to the tokenizer (comma list); their rows are trained."),
    _k("add_special_tokens", _STR_OR_LIST, None,
       "Special tokens to add to the tokenizer (comma list); their rows are trained."),
    _k("new_special_tokens", _STR_OR_LIST, None, "Alias of add_special_tokens."),
    _k("model_revision", str, "main", "Hub revision (branch, tag or commit)."),
    _k("low_cpu_mem_usage", bool, True, "Load weights without a full random init first."),
    _k("rope_scaling", str, None,
       "Stretch the rotary position embedding (linear, dynamic, yarn, llama3) by ceil(cutoff_len / the model's "
       "max_position_embeddings) when training longer inputs, else 2.",
       choices=(None, "linear", "dynamic", "yarn", "llama3")),
    _k("flash_attn", str, "auto", "Attention implementation: auto, disabled, sdpa, fa2, fa3.",
       choices=("auto", "disabled", "sdpa", "fa2", "fa3")),
    _k("use_unsloth", bool, False, "Use unsloth kernels (GPU only).", effective=False),
    _k("use_unsloth_gc", bool, False,
       "Offloaded gradient checkpointing (each layer's input kept in CPU memory; plain torch, runs anywhere)."),
    _k("enable_liger_kernel", bool, False,
       "Liger's Triton kernels through transformers (needs a CUDA GPU and liger-kernel; otherwise said and skipped)."),
    _k("moe_aux_loss_coef", float, None,
       "MoE models: weight of the router's load-balancing loss (router_aux_loss_coef), added while training."),
    _k("disable_gradient_checkpointing", bool, False,
       "Gradient checkpointing is on for training (as in LLaMA-Factory) unless this is true or gradient_checkpointing: false."),
    _k("use_reentrant_gc", bool, False,
       "Use torch's reentrant checkpoint flavour for gradient checkpointing (default false: the non-reentrant one, "
       "transformers 5's default, which also runs under several processes whatever the model wrapper)."),
    _k("upcast_layernorm", bool, False, "Keep the norm weights in float32 when the model computes in bf16/fp16."),
    _k("upcast_lmhead_output", bool, False, "Cast the output head's logits to float32 (bf16/fp16 runs)."),
    _k("train_from_scratch", bool, False, "Random-initialise the model from its config."),
    _k("infer_backend", str, None, "Inference engine plugin for chat/api/predict (`tuneforge plugins --kind engine`)."),
    _k("offload_folder", str, "offload", "Where to offload weights.", effective=False),
    _k("infer_dtype", str, "auto", "Dtype for inference and export: auto, float16, bfloat16, float32.",
       choices=("auto", "float16", "bfloat16", "float32")),
    _k("hf_hub_token", str, None, "Hugging Face hub token."),
    _k("ms_hub_token", str, None, "ModelScope hub token: logs in to download a model (USE_MODELSCOPE_HUB=1) or dataset."),
    _k("om_hub_token", str, None, "Modelers hub token: downloads a model (USE_OPENMIND_HUB=1) or dataset."),
    _k("print_param_status", bool, False, "Print every parameter's dtype, device and trainability."),
    _k("trust_remote_code", bool, False, "Allow model code from the model folder or hub."),
    _k("quantization_bit", int, None,
       "Quantize the base model's weights to this many bits (QLoRA); the quantizer lists the widths it supports.", min=1),
    _k("quantization_method", str, None,
       "Quantizer plugin used when quantization_bit is set (bitsandbytes or bnb, hqq, quanto, eetq); "
       "quantized checkpoints (gptq, awq, ...) are recognised without it."),
    _k("quantization_device_map", str, None, "Device map for quantized loading (auto).", choices=(None, "auto")),
    _k("model_max_length", int, None, "Maximum sequence length of the tokenizer: a shorter model_max_length of the "
       "tokenizer is enlarged to it (unset: to cutoff_len, as LLaMA-Factory derives it).", min=1),
    _k("device_map", (str, dict), None, "Device map passed to from_pretrained."),
    _k("compute_dtype", str, None, "Internal: resolved compute dtype.", effective=False),
    _k("block_diag_attn", bool, False, "Internal: block-diagonal attention for neat packing.", effective=False),
    _k("image_max_pixels", int, 768 * 768, "Multimodal: an image of more pixels (width x height) is scaled down to "
       "this many before the processor (fewer image tokens).", min=1),
    _k("image_min_pixels", int, 32 * 32, "Multimodal: an image of fewer pixels is scaled up to this many before "
       "the processor.", min=1),
    _k("video_max_pixels", int, 256 * 256, "Multimodal: maximum video frame pixels.", min=1),
    _k("video_min_pixels", int, 16 * 16, "Multimodal: minimum video frame pixels.", min=1),
    _k("video_fps", float, 2.0, "Multimodal: frames per second sampled.", min=0, min_open=True),
    _k("video_maxlen", int, 128, "Multimodal: maximum frames.", min=1),
    # vllm_* and sglang_* keys belong to the vllm and sglang engine plugins (tuneforge.plugins.engines).
)

DATA_KEYS = (
    _k("template", str, None, "Chat template plugin; unset: inferred from the tokenizer's own template."),
    _k("dataset", _STR_OR_LIST, None, "Training dataset names from dataset_info.json (comma list)."),
    _k("eval_dataset", _STR_OR_LIST, None, "Evaluation dataset names from dataset_info.json."),
    _k("dataset_dir", str, "data", "Folder holding dataset_info.json and the data files (ONLINE: names are hub ids).",
       path="dir", special=("ONLINE",)),
    _k("media_dir", str, None, "Folder the media paths of multimodal data are relative to (default: dataset_dir).", path="dir"),
    _k("cutoff_len", int, 2048, "Maximum tokens of one training example.", min=1),
    _k("train_on_prompt", bool, False, "Also train on prompt tokens (no -100 mask).", excludes=("mask_history",)),
    _k("mask_history", bool, False, "Train only on the last assistant turn (earlier replies are masked)."),
    _k("streaming", bool, False, "Read, convert and tokenise the data lazily while training; needs max_steps."),
    _k("buffer_size", int, 16384, "Shuffle buffer size when streaming (used to hold out val_size rows).", min=1),
    _k("mix_strategy", str, "concat",
       "How several datasets mix: concat, interleave_under (stop at the first exhausted), "
       "interleave_over (oversample until all are exhausted), interleave_once (sample without replacement: "
       "every row once).",
       choices=("concat", "interleave_under", "interleave_over", "interleave_once")),
    _k("interleave_probs", _STR_OR_LIST, None, "Sampling probabilities for interleaving, one per dataset (comma list)."),
    _k("overwrite_cache", bool, False, "Re-tokenise even when the cache ($TUNEFORGE_CACHE/datasets) has the result."),
    _k("preprocessing_batch_size", int, 1000, "Rows per tokenisation batch.", min=1),
    _k("preprocessing_num_workers", int, None, "Processes used for tokenisation.", min=1),
    _k("max_samples", int, None, "Use at most this many rows of each dataset.", min=1),
    _k("eval_num_beams", int, None, "Beam width of predict_with_generate predictions (num_beams is for chat).", min=1),
    _k("ignore_pad_token_for_loss", bool, True, "Mask pad tokens in labels."),
    _k("val_size", (int, float), 0.0, "Hold out this fraction (<1) or count (>=1) of the data for evaluation.", min=0),
    _k("eval_on_each_dataset", bool, False,
       "Evaluate each eval_dataset on its own: eval_<name>_loss (and other metrics) per dataset."),
    _k("packing", bool, None, "Pack several samples into one row (pt: on unless false)."),
    _k("neat_packing", bool, False, "Pack without cross-sample attention (per-sample position ids); implies packing."),
    _k("tool_format", str, None, "Tool-call format override: the tool format of the named template (default, glm4, llama3, mistral, qwen, ...)."),
    _k("default_system", str, None, "System prompt used when a row has none."),
    _k("enable_thinking", bool, True, "Thinking models: keep the reasoning block."),
    _k("preserve_thinking", bool, None, "Thinking models: earlier replies keep their reasoning (unset: the template's default)."),
    _k("tokenized_path", str, None, "Save tokenised data here after preprocessing; load it from here when it exists.", path="output"),
    _k("data_shared_file_system", bool, False, "Nodes share one file system: one process in all builds the cache."),
    _k("replace_placeholders", dict, None,
       "Replace {{key}} in every text of the data, e.g. {name: Greatbot, author: Allen} for identity.json."),
    _k("skip_bad_rows", bool, False,
       "Skip rows that fail validation (their count and reasons are reported) instead of stopping."),
)

GENERATION_KEYS = (
    _k("do_sample", bool, True, "Sample instead of greedy decoding."),
    _k("temperature", float, 0.95, "Sampling temperature.", min=0),
    _k("top_p", float, 0.7, "Nucleus sampling probability.", min=0, max=1),
    _k("top_k", int, 50, "Top-k sampling.", min=0),
    _k("num_beams", int, 1, "Beam search width.", min=1),
    _k("max_length", int, 1024, "Maximum total tokens including the prompt.", min=1),
    _k("max_new_tokens", int, 1024, "Maximum generated tokens.", min=1),
    _k("repetition_penalty", float, 1.0, "Penalty for repeated tokens.", min=0, min_open=True),
    _k("length_penalty", float, 1.0, "Beam search length penalty."),
    _k("skip_special_tokens", bool, True, "Drop special tokens from decoded text."),
)

EXPORT_KEYS = (
    _k("export_dir", str, None, "Where `tuneforge export` writes the merged model.", path="output"),
    _k("export_size", (int, float), 5, "Shard size in GB.", min=0, min_open=True),
    _k("export_device", str, "cpu", "Device used to merge: cpu, or auto (device_map auto).", choices=("cpu", "auto")),
    _k("export_quantization_bit", int, None, "Quantize the exported model to this many bits (a quantizer plugin's export_quantize).", min=1),
    _k("export_quantization_dataset", str, None, "Calibration data for export quantization."),
    _k("export_quantization_nsamples", int, 128, "Calibration samples of a quantizing export.", min=1),
    _k("export_quantization_maxlen", int, 1024, "Calibration sequence length in tokens of a quantizing export.", min=1),
    _k("export_legacy_format", bool, False, "Save .bin instead of safetensors."),
    _k("export_hub_model_id", str, None, "Push the export to this hub repo."),
)

EVAL_KEYS = (
    _k("task", str, None, "Benchmark for `tuneforge eval`: <folder>_<split> under task_dir, e.g. mmlu_test."),
    _k("task_dir", str, "evaluation", "Folder of benchmark task folders (mapping.json + CSV files).", path="dir"),
    _k("batch_size", int, 4, "Questions scored per forward pass in `tuneforge eval`.", min=1),
    _k("lang", str, "en", "Prompt language of the benchmark.", choices=("en", "zh")),
    _k("n_shot", int, 5, "Solved dev examples shown before each question.", min=0),
    _k("save_dir", str, None, "Where `tuneforge eval` saves results.json, results.log and scores.json.", path="output"),
    _k("download_mode", str, "reuse_dataset_if_exists", "datasets download mode.", effective=False),
)

CORE_KEY_GROUPS: dict[str, tuple[ConfigKey, ...]] = {
    "run": RUN_KEYS,
    "model": MODEL_KEYS,
    "data": DATA_KEYS,
    "generation": GENERATION_KEYS,
    "export": EXPORT_KEYS,
    "eval": EVAL_KEYS,
}

CORE_KEYS: dict[str, ConfigKey] = {k.name: k for group in CORE_KEY_GROUPS.values() for k in group}

# --- LLaMA-Factory keys added for conformance (bench/lf_conformance.py, docs/compatibility.md) ---------------

CONFORMANCE_KEYS = (
    _k("use_v1_kernels", bool, False,
       "LLaMA-Factory's fused kernel plugins (Ascend NPU and liger-style ops): speed only; tuneforge runs the "
       "model's own kernels.", effective=False),
    _k("use_kv_cache", bool, True, "Generation: reuse the key/value cache (transformers always does).", effective=False),
    _k("new_special_tokens_config", str, None,
       "YAML file of special tokens (token: description) to add; takes precedence over add_special_tokens."),
    _k("init_special_tokens", str, "noise_init",
       "How new token rows start: noise_init (mean + noise), desc_init (mean of the description's tokens, "
       "from new_special_tokens_config), desc_init_w_noise (both).",
       choices=("noise_init", "desc_init", "desc_init_w_noise")),
    _k("image_do_pan_and_scan", bool, False, "Multimodal: the image processor's do_pan_and_scan (Gemma 3: a wide "
       "or tall image also goes in as crops, each with its own image tokens); unset keeps the checkpoint's setting."),
    _k("crop_to_patches", bool, False, "Multimodal: the image processor's crop_to_patches (InternVL: tiles plus a "
       "thumbnail, each with its own image tokens); unset keeps the checkpoint's setting."),
    _k("use_audio_in_video", bool, False, "Multimodal: use the audio track of videos."),
    _k("audio_sampling_rate", int, 16000, "Multimodal: audio sampling rate.", min=1),
    _k("preserve_thinking", bool, False, "Keep the reasoning of earlier assistant turns in the prompt.",
       effective=False),
    _k("swanlab_lark_webhook_url", str, None, "SwanLab: Lark webhook for notifications.", effective=False),
    _k("swanlab_lark_secret", str, None, "SwanLab: Lark webhook secret.", effective=False),
    _k("fsdp_transformer_layer_cls_to_wrap", _STR_OR_LIST, None,
       "FSDP: decoder layer class(es) to wrap (comma list); merged into fsdp_config as "
       "transformers 5 expects (it dropped this argument)."),
    # Ray Train (core/train/ray_launcher.py): they act with USE_RAY=1, as in LLaMA-Factory; set without
    # it, `check` warns that the run trains without Ray.
    _k("ray_run_name", str, None, "Ray Train (USE_RAY=1): name of Ray's run record under ray_storage_path."),
    _k("ray_storage_path", str, "./saves", "Ray Train (USE_RAY=1): where Ray keeps its run record (result, "
       "checkpoints)."),
    _k("ray_storage_filesystem", str, None, "Ray Train (USE_RAY=1): ray_storage_path is on s3, gs or gcs.",
       choices=("s3", "gs", "gcs")),
    _k("ray_num_workers", int, 1, "Ray Train (USE_RAY=1): number of training workers (processes).", min=1),
    _k("resources_per_worker", (dict, str), None, "Ray Train (USE_RAY=1): resources of one worker, e.g. "
       "{\"GPU\": 1} (default: one GPU when the Ray cluster has GPUs, else one CPU)."),
    _k("placement_strategy", str, "PACK", "Ray Train (USE_RAY=1): how workers are placed on nodes.",
       choices=("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK")),
    _k("ray_init_kwargs", (dict, str), None, "Ray Train (USE_RAY=1): ray.init arguments (address, runtime_env, ...)."),
)


def _add_conformance_keys() -> None:
    from .refusals import REFUSED_CONFIG_KEYS

    CORE_KEY_GROUPS["conformance"] = CONFORMANCE_KEYS
    CORE_KEY_GROUPS["refused"] = REFUSED_CONFIG_KEYS
    for key in CONFORMANCE_KEYS + REFUSED_CONFIG_KEYS:
        CORE_KEYS.setdefault(key.name, key)


_add_conformance_keys()
