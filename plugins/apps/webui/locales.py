"""Every text of the web UI in English and Chinese: component labels and info lines (``LOCALES``, by
element id) and the messages handlers show (``MESSAGES``, by message id).

tests/test_webui.py checks that every component of the built page has an entry here with a label in
every language, and that every message has every language. Generated plugin widgets are the one
exception by design: their label is the config key's name (what the YAML says, in any language) and
their info is the plugin's own doc.
"""

from __future__ import annotations

#: Language code -> the name shown in the language dropdown.
LANGUAGES: dict[str, str] = {"en": "English", "zh": "中文"}


def _t(en: str, zh: str, en_info: str = "", zh_info: str = "") -> dict[str, dict[str, str]]:
    entry = {"en": {"label": en}, "zh": {"label": zh}}
    if en_info or zh_info:
        entry["en"]["info"] = en_info
        entry["zh"]["info"] = zh_info
    return entry


LOCALES: dict[str, dict[str, dict[str, str]]] = {
    "app.title": _t("## tuneforge: fine-tune with plugins", "## tuneforge：用插件微调大模型"),
    "tab.train": _t("Train", "训练"),
    "tab.evaluate": _t("Evaluate & Predict", "评估与预测"),
    "tab.chat": _t("Chat", "对话"),
    "tab.export": _t("Export", "导出"),
    # --- top bar
    "top.lang": _t("Language", "语言"),
    "top.model_name": _t("Model name", "模型名称", "A known family fills in the hub id and the template.",
                         "选择已知模型会自动填写 Hub 地址和对话模板。"),
    "top.model_path": _t("Model path", "模型路径", "A local folder or a hub id.", "本地文件夹或 Hub 模型地址。"),
    "top.finetuning_type": _t("Finetuning method", "微调方法", "The installed method plugins.", "已安装的微调方法插件。"),
    "top.checkpoint_path": _t("Checkpoint path", "检查点路径",
                              "Runs of this model and method under the save folder; an adapter is loaded on the base, a full checkpoint replaces it.",
                              "保存目录中该模型与方法的训练结果；适配器会加载到基座模型上，完整检查点会替代基座模型。"),
    "top.refresh": _t("Refresh checkpoints", "刷新检查点"),
    "top.advanced": _t("Advanced model settings", "高级模型设置"),
    "top.quantization_bit": _t("Quantization bit", "量化位数", "Quantize the base model on the fly (QLoRA).",
                               "加载时量化基座模型（QLoRA）。"),
    "top.quantization_method": _t("Quantization method", "量化方法", "The installed quantizer plugins.", "已安装的量化插件。"),
    "top.template": _t("Chat template", "对话模板", "auto: detected from the tokenizer.", "auto：根据分词器自动识别。"),
    "top.rope_scaling": _t("RoPE scaling", "RoPE 插值方法", "Accepted; not acted on yet (check warns).",
                           "已接受，但当前版本尚未生效（check 会给出警告）。"),
    "top.booster": _t("Booster", "加速方式", "Attention kernels and patches (GPU only).", "注意力内核与加速补丁（仅 GPU）。"),
    # --- train tab
    "train.stage": _t("Stage", "训练阶段", "The installed stage plugins.", "已安装的训练阶段插件。"),
    "train.dataset_dir": _t("Data dir", "数据目录", "The folder holding dataset_info.json.", "包含 dataset_info.json 的文件夹。"),
    "train.dataset": _t("Dataset", "数据集", "Names from dataset_info.json (or data files).", "dataset_info.json 中的名称（或数据文件）。"),
    "train.preview_data": _t("Preview dataset", "预览数据集"),
    "train.data_box": _t("Data preview", "数据预览"),
    "train.data_rows": _t("First rows", "前几行"),
    "train.check_data": _t("Check data (data doctor)", "检查数据（数据诊断）"),
    "train.data_example": _t("One rendered example: trained tokens marked", "渲染后的样例：高亮部分参与训练"),
    "train.data_report": _t("Data report", "数据报告"),
    "train.learning_rate": _t("Learning rate", "学习率", "Initial learning rate of AdamW.", "AdamW 的初始学习率。"),
    "train.num_train_epochs": _t("Epochs", "训练轮数", "Number of passes over the data.", "遍历数据的次数。"),
    "train.max_grad_norm": _t("Maximum gradient norm", "最大梯度范数", "Gradients are clipped to this norm.", "梯度裁剪的范数上限。"),
    "train.max_samples": _t("Max samples", "最大样本数", "At most this many rows of each dataset.", "每个数据集最多使用的行数。"),
    "train.compute_type": _t("Compute type", "计算类型", "Mixed precision (bf16/fp16), fp32, or pure bf16.",
                             "混合精度（bf16/fp16）、fp32 或纯 bf16。"),
    "train.cutoff_len": _t("Cutoff length", "截断长度", "Maximum tokens of one example.", "单个样本的最大 token 数。"),
    "train.batch_size": _t("Batch size", "批处理大小", "Examples per device per step.", "每个设备每步的样本数。"),
    "train.gradient_accumulation_steps": _t("Gradient accumulation", "梯度累积", "Steps accumulated before each update.",
                                            "每次更新前累积的步数。"),
    "train.val_size": _t("Val size", "验证集比例", "Fraction of the data held out for evaluation.", "留作验证的数据比例。"),
    "train.lr_scheduler_type": _t("LR scheduler", "学习率调度器", "Learning-rate schedule.", "学习率的变化方式。"),
    "train.extra_box": _t("Extra configurations", "其它参数设置"),
    "train.logging_steps": _t("Logging steps", "日志间隔", "Steps between two log lines (and loss points).", "每两次日志（及损失点）之间的步数。"),
    "train.save_steps": _t("Save steps", "保存间隔", "Steps between two checkpoints.", "每两次保存检查点之间的步数。"),
    "train.warmup_steps": _t("Warmup steps", "预热步数", "Steps of learning-rate warmup.", "学习率预热的步数。"),
    "train.neftune_alpha": _t("NEFTune alpha", "NEFTune 噪声强度", "Noise added to the embeddings (0: off).", "嵌入向量噪声的强度（0 为关闭）。"),
    "train.packing": _t("Packing", "序列打包", "Pack several examples into one row.", "将多个样本拼接到一行。"),
    "train.neat_packing": _t("Neat packing", "无污染打包", "Pack without attention across examples.", "打包时样本之间互不注意。"),
    "train.train_on_prompt": _t("Train on prompt", "学习提示词", "Also compute the loss on prompt tokens.", "提示词部分也计算损失。"),
    "train.mask_history": _t("Mask history", "不学习历史对话", "Train only on the last assistant turn.", "只学习最后一轮回复。"),
    "train.report_to": _t("Report to", "记录到", "Experiment trackers that receive the logs.", "接收训练日志的实验追踪工具。"),
    "train.replace_placeholders": _t("Replace placeholders", "替换占位符",
                                     "e.g. {name: Greatbot, author: Allen} fills {{name}} in the identity data.",
                                     "例如 {name: Greatbot, author: Allen}，用于填充 identity 数据中的 {{name}}。"),
    "train.extra_args": _t("Extra arguments (YAML)", "额外参数（YAML）", "Any config keys, merged last.",
                           "任意配置项，最后合并。"),
    "train.preview_btn": _t("Preview command", "预览命令"),
    "train.save_btn": _t("Save arguments", "保存训练参数"),
    "train.load_btn": _t("Load arguments", "载入训练参数"),
    "train.start_btn": _t("Start", "开始"),
    "train.abort_btn": _t("Abort", "中断"),
    "train.output_dir": _t("Output dir", "输出目录", "A name under saves/<model>/<method>, or a path.",
                           "saves/<模型>/<方法> 下的名称，或完整路径。"),
    "train.config_path": _t("Config path", "配置路径", "Where save/load arguments writes and reads (saves/configs).",
                            "保存/载入参数的文件（位于 saves/configs）。"),
    "train.device_count": _t("Device count", "设备数量", "Processes to train with (more than 1: torchrun).",
                             "训练进程数（大于 1 时使用 torchrun）。"),
    "train.preview": _t("The config and command Start runs", "开始训练时运行的配置与命令"),
    "train.log": _t("Log", "日志"),
    "train.loss": _t("Loss", "损失"),
    # --- evaluate & predict tab
    "eval.dataset_dir": _t("Data dir", "数据目录", "The folder holding dataset_info.json.", "包含 dataset_info.json 的文件夹。"),
    "eval.dataset": _t("Eval dataset", "评估数据集", "Predictions are scored against each example's last reply.",
                       "以每个样本的最后一轮回复为参考计算分数。"),
    "eval.cutoff_len": _t("Cutoff length", "截断长度", "Maximum prompt tokens.", "提示词的最大 token 数。"),
    "eval.max_samples": _t("Max samples", "最大样本数", "At most this many rows.", "最多使用的行数。"),
    "eval.batch_size": _t("Batch size", "批处理大小", "Prompts generated at once.", "同时生成的提示词数。"),
    "eval.max_new_tokens": _t("Maximum new tokens", "最大生成长度", "", ""),
    "eval.top_p": _t("Top-p", "Top-p 采样值", "", ""),
    "eval.temperature": _t("Temperature", "温度系数", "", ""),
    "eval.output_dir": _t("Output dir", "输出目录", "predict_results.json and generated_predictions.jsonl go here.",
                          "predict_results.json 和 generated_predictions.jsonl 保存在这里。"),
    "eval.preview_btn": _t("Preview command", "预览命令"),
    "eval.start_btn": _t("Start prediction", "开始预测"),
    "eval.abort_btn": _t("Abort", "中断"),
    "eval.preview": _t("The config and command Start runs", "开始时运行的配置与命令"),
    "eval.log": _t("Log", "日志"),
    "eval.results": _t("Scores (BLEU / ROUGE or accuracy)", "分数（BLEU / ROUGE 或准确率）"),
    "bench.box": _t("Benchmark (MMLU / C-Eval / CMMLU layout)", "基准测试（MMLU / C-Eval / CMMLU 格式）"),
    "bench.task_dir": _t("Task dir", "任务目录", "The folder of benchmark folders.", "存放基准测试的文件夹。"),
    "bench.task": _t("Task", "任务", "<folder>_<split>", "<文件夹>_<划分>"),
    "bench.n_shot": _t("Few-shot examples", "示例数量", "Solved dev examples before each question.", "每道题前给出的已解答示例数。"),
    "bench.lang": _t("Prompt language", "提示语言", "", ""),
    "bench.batch_size": _t("Batch size", "批处理大小", "Questions per forward pass.", "每次前向计算的题目数。"),
    "bench.save_dir": _t("Save dir", "保存目录", "results.json, results.log and scores.json go here.",
                         "results.json、results.log 和 scores.json 保存在这里。"),
    "bench.start_btn": _t("Start benchmark", "开始基准测试"),
    # --- chat tab
    "chat.infer_backend": _t("Inference engine", "推理引擎", "The installed engine plugins.", "已安装的推理引擎插件。"),
    "chat.infer_dtype": _t("Inference dtype", "推理数据类型", "", ""),
    "chat.load_btn": _t("Load model", "加载模型"),
    "chat.unload_btn": _t("Unload model", "卸载模型"),
    "chat.chatbot": _t("Conversation", "对话"),
    "chat.query": _t("Message", "输入", "", "", ),
    "chat.image": _t("Image (sent with the next message; vision-language models)", "图像（随下一条消息发送；多模态模型）"),
    "chat.submit": _t("Send", "发送"),
    "chat.clear": _t("Clear history", "清空历史"),
    "chat.system": _t("System prompt", "系统提示词"),
    "chat.tools": _t("Tools (JSON)", "工具列表（JSON）", "A JSON list of tool schemas.", "工具定义的 JSON 列表。"),
    "chat.max_new_tokens": _t("Maximum new tokens", "最大生成长度"),
    "chat.top_p": _t("Top-p", "Top-p 采样值"),
    "chat.temperature": _t("Temperature", "温度系数", "0: greedy decoding.", "0 表示贪心解码。"),
    "chat.skip_special_tokens": _t("Skip special tokens", "跳过特殊 token"),
    # --- export tab
    "export.export_size": _t("Max shard size (GB)", "最大分块大小（GB）", "", ""),
    "export.export_quantization_bit": _t("Export quantization bit", "导出量化位数",
                                         "Quantize the verified export with a quantizer plugin.", "用量化插件量化已验证的导出模型。"),
    "export.export_quantization_dataset": _t("Export quantization dataset", "导出量化数据集",
                                             "Calibration data: a dataset name or a data file.", "校准数据：数据集名称或数据文件。"),
    "export.export_device": _t("Export device", "导出设备", "", ""),
    "export.export_legacy_format": _t("Legacy format (.bin)", "旧格式（.bin）", "", ""),
    "export.export_dir": _t("Export dir", "导出目录", "The folder the merged model is written to.", "合并后模型的保存目录。"),
    "export.export_hub_model_id": _t("Hub model id", "Hub 模型 ID", "Push the export to this hub repo (optional).",
                                     "将导出结果推送到该 Hub 仓库（可选）。"),
    "export.preview_btn": _t("Preview command", "预览命令"),
    "export.start_btn": _t("Export", "开始导出"),
    "export.preview": _t("The config and command Export runs", "导出时运行的配置与命令"),
    "export.log": _t("Log", "日志"),
    "export.report": _t("Verification report", "验证报告"),
}

MESSAGES: dict[str, dict[str, str]] = {
    "plugin_accordion": {"en": "{name} ({kind} plugin) settings", "zh": "{name}（{kind}插件）参数设置"},
    "plugin_about": {"en": "{description}\n\nProvided by {provider}; status: {status}.",
                     "zh": "{description}\n\n提供者：{provider}；状态：{status}。"},
    "plugin_no_keys": {"en": "This plugin has no settings of its own.", "zh": "该插件没有自己的参数。"},
    "key_not_effective": {"en": "accepted, not acted on yet", "zh": "已接受，当前版本尚未生效"},
    "kind_method": {"en": "method", "zh": "微调方法"},
    "kind_stage": {"en": "stage", "zh": "训练阶段"},
    "kind_quantizer": {"en": "quantizer", "zh": "量化"},
    "kind_engine": {"en": "engine", "zh": "推理引擎"},
    "curve_raw": {"en": "original", "zh": "原始值"},
    "curve_smoothed": {"en": "smoothed", "zh": "平滑后"},
    "progress_loading": {"en": "Starting: loading the model and the data ...", "zh": "正在启动：加载模型和数据……"},
    "progress_text": {"en": "step {current}/{total} ({percentage:.1f}%) · elapsed {elapsed} · remaining {remaining}",
                      "zh": "第 {current}/{total} 步（{percentage:.1f}%）· 已用时间 {elapsed} · 剩余时间 {remaining}"},
    "job_train": {"en": "Training", "zh": "训练"},
    "job_predict": {"en": "Prediction", "zh": "预测"},
    "job_eval": {"en": "Benchmark", "zh": "基准测试"},
    "job_export": {"en": "Export", "zh": "导出"},
    "job_started": {"en": "Started; outputs in `{where}`.", "zh": "已开始；输出目录 `{where}`。"},
    "job_running": {"en": "{kind} is running; outputs in `{where}`.", "zh": "{kind}正在运行；输出目录 `{where}`。"},
    "job_aborting": {"en": "{kind} is stopping: finishing the step and saving a checkpoint ...",
                     "zh": "{kind}正在停止：完成当前步并保存检查点……"},
    "job_finished": {"en": "{kind} finished; outputs in `{where}`.", "zh": "{kind}已完成；输出目录 `{where}`。"},
    "job_aborted": {"en": "{kind} aborted; last checkpoint: `{checkpoint}`. Start again with the same output dir to resume.",
                    "zh": "{kind}已中断；最新检查点：`{checkpoint}`。使用相同的输出目录再次开始即可继续训练。"},
    "job_failed": {"en": "{kind} failed (exit status {code}):\n```\n{error}\n```",
                   "zh": "{kind}失败（退出码 {code}）：\n```\n{error}\n```"},
    "runner_busy": {"en": "Another job is running: {detail}. Abort it or wait for it to finish.",
                    "zh": "已有任务在运行：{detail}。请先中断或等待其完成。"},
    "abort_sent": {"en": "Abort sent: the run finishes its step, saves a checkpoint and stops.",
                   "zh": "已发送中断：完成当前步、保存检查点后停止。"},
    "nothing_running": {"en": "No job is running.", "zh": "当前没有运行中的任务。"},
    "reattached": {"en": "Reattached to the running job in `{where}`.", "zh": "已重新连接到运行中的任务：`{where}`。"},
    "config_invalid": {"en": "The config does not pass `tuneforge check`:\n```\n{problems}\n```",
                       "zh": "配置未通过 `tuneforge check`：\n```\n{problems}\n```"},
    "output_dir_used": {"en": "`{path}` already holds a finished run: choose a new output dir.",
                        "zh": "`{path}` 中已有完成的训练：请换一个输出目录。"},
    "check_ok": {"en": "tuneforge check: config OK", "zh": "tuneforge check：配置正确"},
    "check_failed": {"en": "tuneforge check found problems:", "zh": "tuneforge check 发现问题："},
    "preview_header": {"en": "Start runs this config with:", "zh": "开始时将用以下命令运行此配置："},
    "args_saved": {"en": "Arguments saved to `{path}`.", "zh": "参数已保存到 `{path}`。"},
    "args_loaded": {"en": "Arguments loaded from `{path}`.", "zh": "已从 `{path}` 载入参数。"},
    "args_load_failed": {"en": "Cannot load `{path}`: {error}", "zh": "无法载入 `{path}`：{error}"},
    "no_dataset": {"en": "Choose a dataset first.", "zh": "请先选择数据集。"},
    "data_rows_shown": {"en": "{name}: the first {shown} of {total} rows.", "zh": "{name}：共 {total} 行中的前 {shown} 行。"},
    "doctor_no_output": {"en": "`tuneforge data` printed nothing (exit status {code}).",
                         "zh": "`tuneforge data` 没有输出（退出码 {code}）。"},
    "chat_loading": {"en": "Loading `{model}` ...", "zh": "正在加载 `{model}`……"},
    "chat_loaded": {"en": "Loaded `{model}` (adapters: `{adapters}`, template `{template}`, engine `{engine}`).",
                    "zh": "已加载 `{model}`（适配器：`{adapters}`，模板 `{template}`，引擎 `{engine}`）。"},
    "chat_load_failed": {"en": "Cannot load the model: {error}", "zh": "无法加载模型：{error}"},
    "chat_unloaded": {"en": "Model unloaded.", "zh": "模型已卸载。"},
    "chat_not_loaded": {"en": "Load a model first.", "zh": "请先加载模型。"},
    "chat_error": {"en": "error", "zh": "错误"},
    "verify_passed": {"en": "Verification passed", "zh": "验证通过"},
    "verify_failed": {"en": "Verification failed: do not use this export", "zh": "验证失败：请勿使用此导出结果"},
    "verify_weights": {"en": "merged weights vs base: {changed} of {compared} tensors changed (max |diff| {diff:.3g})",
                       "zh": "合并后权重与基座相比：{compared} 个张量中有 {changed} 个改变（最大差值 {diff:.3g}）"},
    "verify_reload": {"en": "reloaded with plain transformers: logits vs base + adapter max |diff| {diff:.2e} (tolerance {tolerance:.1e}); top token agrees at {agree} positions",
                      "zh": "用 transformers 重新加载：与基座 + 适配器的 logits 最大差值 {diff:.2e}（容差 {tolerance:.1e}）；{agree} 个位置的最高概率 token 一致"},
    "verify_reload_failed": {"en": "plain transformers cannot load the export", "zh": "transformers 无法加载导出结果"},
    "verify_template_ok": {"en": "the saved tokenizer renders prompts exactly as training did",
                           "zh": "保存的分词器渲染提示词的方式与训练时完全一致"},
    "verify_template_differs": {"en": "the saved tokenizer's chat template renders differently from training",
                                "zh": "保存的分词器的对话模板与训练时渲染结果不同"},
    "export_dir_missing": {"en": "export dir: empty; say where to write the merged model",
                           "zh": "导出目录为空：请指定合并后模型的保存位置"},
}


def text(elem_id: str, lang: str) -> dict[str, str]:
    """The label (and info) of an element in ``lang``; a missing entry is a bug the tests catch."""
    try:
        return LOCALES[elem_id][lang]
    except KeyError:
        raise KeyError(f"no {lang!r} text for web UI element {elem_id!r}: add it to tuneforge/webui/locales.py") from None


def message(msg_id: str, lang: str, **values) -> str:
    """A message in ``lang`` (English when ``lang`` is unknown), filled with ``values``."""
    try:
        template = MESSAGES[msg_id]
    except KeyError:
        raise KeyError(f"no web UI message {msg_id!r}: add it to tuneforge/webui/locales.py") from None
    return template.get(lang, template["en"]).format(**values)
