"""Merge, save and verify an export (LLaMA-Factory's ``export_*`` keys), then optionally quantize
and push it.

The export folder holds everything a plain ``transformers`` user (or Ollama) needs: sharded
safetensors (``export_size`` GB per shard; ``.bin`` with ``export_legacy_format``), config,
generation config whose EOS is the template's stop tokens, the tokenizer with the training chat
template written into it, and an Ollama ``Modelfile``.

Verification, printed and saved to ``export_verification.json``:

1. every adapter really changes something (the method's ``AdapterSpec.check_trained``: e.g. an
   all-zero LoRA B, i.e. an untrained adapter, is refused before anything is written);
2. the merged weights differ from the base (max |diff| over the saved tensors vs the base files,
   compared in the export dtype) and the merged model's logits differ from the base model's;
3. the export, reloaded with plain ``AutoModelForCausalLM`` / ``AutoTokenizer``, gives the logits of
   base + adapter (unmerged) within a dtype-dependent tolerance (max |diff| printed);
4. the saved tokenizer's chat template renders prompts exactly as training did.

A vision-language model (its template has a media handler) also gets its processor files
(``preprocessor_config.json`` & co.) in the export; the checks then add an image prompt (a drawn
picture) to the probes, reload with ``AutoModelForImageTextToText``, and check that the export's own
image processor gives the pixels training gave.

A failed check raises :class:`ExportError` (non-zero exit) naming what is wrong.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from tuneforge.errors import TuneforgeError
from tuneforge.plugin_manager import split_names
from . import weights

#: |logits(export) - logits(base + adapter)| allowed, times max(1, max |logit|), per export dtype.
TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 4e-2}
PROBES = (
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "user", "content": "你好，请介绍一下你自己。"}],
)


class ExportError(TuneforgeError):
    """An export that must not be used: the reason and, where there is one, the fix."""


def say(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------------------- checks first


def problems_before_loading(prepared) -> list[str]:
    """Everything that makes the export impossible, found from the config alone (nothing is loaded)."""
    config, plan = prepared.config, prepared.plan
    out = []
    if not config.export_dir:
        out.append("export_dir is required: the folder the merged model is written to")
    if config.export_size is not None and config.export_size <= 0:
        out.append(f"export_size must be positive (GB per shard), got {config.export_size}")
    adapters = split_names(config.adapter_name_or_path)
    if config.quantization_bit is not None:
        out.append(
            f"quantization_bit: {config.quantization_bit} loads the base model quantized, and an adapter cannot be merged "
            "exactly into quantized weights (they would have to be dequantized, changed and rounded again). Fix: remove "
            "quantization_bit (and quantization_method) and export from the unquantized base model, which the adapter "
            "applies to unchanged, QLoRA adapters included; for a quantized export add export_quantization_bit")
    elif plan.prequantized and adapters:
        out.append(
            f"{config.model_name_or_path} is already quantized ({plan.prequantized}), and an adapter cannot be merged exactly "
            "into quantized weights. Fix: set model_name_or_path to the original unquantized model the adapter was trained "
            "on (the adapter applies to it unchanged); for a quantized export add export_quantization_bit")
    spec = plan.method.spec.adapter
    if adapters and spec is None:
        out.append(f"adapter_name_or_path is set, but finetuning_type: {plan.method.name} has no adapters to merge; "
                   "set finetuning_type to the method the adapter was trained with")
    for adapter in adapters if spec is not None else ():
        if Path(adapter).is_dir():
            if not spec.is_adapter_dir(adapter):
                out.append(f"adapter {adapter} is not an adapter of method '{plan.method.name}' (finetuning_type); set "
                           "finetuning_type to the method it was trained with")
                continue
            why = spec.check_trained(adapter) if spec.check_trained is not None else None
            if why:
                out.append(
                    f"adapter {adapter} is empty: {why}, so merging it would change nothing (an untrained adapter: "
                    "0 steps, learning_rate 0, or the initial adapter of a run). Train it, or point adapter_name_or_path "
                    "at the trained adapter")
    if config.export_quantization_bit is not None:
        try:
            export_quantizer(prepared)
        except ExportError as exc:
            out.append(str(exc))
        if not config.export_quantization_dataset:
            out.append("export_quantization_bit needs export_quantization_dataset: calibration data (a dataset name or a "
                       "data file), as in LLaMA-Factory")
    return out


def export_quantizer(prepared):
    """The quantizer plugin that quantizes the export: ``quantization_method`` when set, else the
    one active plugin able to export ``export_quantization_bit`` bits."""
    config, manager = prepared.config, prepared.manager
    bits = config.export_quantization_bit
    able = []
    for entry in manager.entries("quantizer"):
        spec = entry.spec
        if spec.export_quantize is None or (spec.bits and bits not in spec.bits):
            continue
        able.append(entry)
    if config.is_set("quantization_method"):
        name = config.quantization_method
        entry = manager.entry("quantizer", name, key="quantization_method")
        if entry.spec.export_quantize is None:
            others = ", ".join(e.name for e in able) or "none installed"
            raise ExportError(f"quantizer '{name}' cannot quantize an export (it quantizes at load time only); "
                              f"quantizers that can export {bits}-bit models: {others}")
        if entry.spec.bits and bits not in entry.spec.bits:
            raise ExportError(f"quantizer '{name}' exports {', '.join(map(str, entry.spec.bits))}-bit models, not {bits}-bit")
        if entry.status != "active":
            raise ExportError(f"export_quantization_bit: quantizer '{name}' is {entry.status}")
        return entry
    active = [e for e in able if e.status == "active"]
    if len(active) == 1:
        return active[0]
    if len(active) > 1:
        raise ExportError(f"several quantizers can export {bits}-bit models ({', '.join(e.name for e in active)}); "
                          "choose one with quantization_method")
    if able:
        reasons = "; ".join(f"{e.name} is {e.status}" for e in able)
        raise ExportError(f"export_quantization_bit: {bits} needs a quantizer plugin that can quantize an export, and none "
                          f"can run here: {reasons}")
    raise ExportError(f"export_quantization_bit: {bits}: no installed quantizer plugin can quantize an export to {bits} bits "
                      "(`tuneforge plugins --kind quantizer` lists them); export without it and quantize the folder separately")


# --------------------------------------------------------------------------------------- the export


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _shard_size(config) -> str:
    return f"{max(1, int(round(float(config.export_size) * 1024)))}MB"


def _probe_ids(template, tokenizer, config) -> list[tuple[list[int], dict]]:
    """The prompts the checks compare logits on: (ids, extra model inputs); the extra inputs are empty
    for text prompts (see :func:`_image_probe` for a vision-language model's)."""
    system = config.default_system
    return [(template.encode_prompt(tokenizer, messages, system, enable_thinking=config.enable_thinking)[-256:], {})
            for messages in PROBES]


#: The image prompt a vision-language export is checked on (a drawn picture, so nothing is read from disk
#: but what the check writes).
IMAGE_PROBE = [{"role": "user", "content": "<image>What is in this picture?"}]


def _probe_image(folder: Path) -> str:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (96, 64), (30, 90, 200))
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 8, 50, 40), fill=(230, 40, 40))
    draw.ellipse((55, 20, 90, 60), fill=(250, 220, 30))
    path = folder / "probe.png"
    image.save(path)
    return str(path)


def _image_probe(ctx, template, tokenizer, config, folder: Path):
    """(ids, model inputs) of an image prompt, through the template's media handler (the processor
    that training used), or None for a text-only template."""
    import torch

    media = getattr(ctx, "media", None)
    if media is None or "images" not in media.modalities:
        return None
    files = {"images": [_probe_image(folder)]}
    model_path = str(config.model_name_or_path)
    messages = media.expand(IMAGE_PROBE, files, model_path, tokenizer)
    ids = template.encode_prompt(tokenizer, messages, config.default_system, enable_thinking=config.enable_thinking)
    extra = dict(media.inputs([files], model_path, tokenizer))
    tensor = torch.tensor([ids])
    kinds = torch.zeros_like(tensor)
    for token, kind in media.media_token_ids(tokenizer).items():
        kinds[tensor == token] = kind
    extra["mm_token_type_ids"] = kinds
    return ids, extra


def _on(model, extra: dict) -> dict:
    """The probe's extra inputs on the model's device; floating ones (pixels) in the model's dtype."""
    dtype = next(model.parameters()).dtype
    return {k: v.to(model.device, dtype=dtype) if v.is_floating_point() else v.to(model.device) for k, v in extra.items()}


def _logits(model, probes):
    import torch

    out = []
    with torch.inference_mode():
        for ids, extra in probes:
            tensor = torch.tensor([ids], device=model.device)
            out.append(model(input_ids=tensor, attention_mask=torch.ones_like(tensor), **_on(model, extra)).logits[0].float().cpu())
    return out


#: Processor files a vision/audio-language model keeps beside its weights (transformers' names).
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json")


#: The conversation whose rendering must not change between training and the export's chat template.
CHECK_CONVERSATION = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am a model."},
                      {"role": "user", "content": "你好"}]


def _media_chat_template(tokenizer, own: str | None, template) -> str:
    """A vision-language export's chat template: the model's own when it renders text exactly as
    training did and also renders image content parts (``{"type": "image"}``, what processors and
    OpenAI-style clients send), else the training template (text content only). Says which."""
    training = tokenizer.chat_template
    if own:
        tokenizer.chat_template = own
        try:
            same = tokenizer.apply_chat_template(CHECK_CONVERSATION, tokenize=False, add_generation_prompt=True) == \
                template.render_prompt(tokenizer, CHECK_CONVERSATION)
            text = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
            image = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
            takes_images = tokenizer.apply_chat_template(image, tokenize=False) != tokenizer.apply_chat_template(text, tokenize=False)
        except Exception:
            same = takes_images = False
        if same and takes_images:
            say("chat template: the model's own (it renders text as training did, and image content parts)")
            return "model"
        tokenizer.chat_template = training
    say(f"warning: chat template: the '{template.name}' training template, which renders text content only; give "
        "images to the export as the template's media tokens in the text")
    return "training"


def _save_processor(source: str, out_dir: Path) -> list[str]:
    """The model's processor (image processor & co.) written to ``out_dir``, before the tokenizer (a
    processor saves a tokenizer too, and the export's tokenizer carries the training chat template).
    transformers' AutoProcessor when it can build one, else the image processor alone; the files a
    local model folder has that neither wrote are copied. Returns the files written."""
    from transformers import AutoImageProcessor, AutoProcessor

    try:
        AutoProcessor.from_pretrained(source).save_pretrained(out_dir)
    except Exception:  # e.g. Qwen2-VL's processor needs torchvision's video processor; its image processor does not
        AutoImageProcessor.from_pretrained(source).save_pretrained(out_dir)
    for name in PROCESSOR_FILES:
        if (Path(source) / name).is_file() and not (out_dir / name).exists():
            shutil.copy2(Path(source) / name, out_dir / name)
    return [name for name in PROCESSOR_FILES if (out_dir / name).is_file()]


def _max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def _clean(folder: Path) -> list[str]:
    removed = []
    for pattern in weights.WEIGHT_PATTERNS:
        for path in folder.glob(pattern):
            path.unlink()
            removed.append(path.name)
    return removed


def _fix_generation_config(model, template, tokenizer) -> None:
    gen = model.generation_config
    stop_ids = template.stop_token_ids(tokenizer)
    gen.eos_token_id = stop_ids[0] if len(stop_ids) == 1 else stop_ids
    if tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    # A sampling parameter without do_sample makes transformers warn on every generate (LLaMA-Factory fixes it too).
    if not gen.do_sample and any(getattr(gen, k, None) not in (None, d) for k, d in (("temperature", 1.0), ("top_p", 1.0))):
        gen.do_sample = True


def run_export(prepared) -> dict:
    """Merge, save, verify (and quantize / push when asked). Returns the verification report."""
    import gc

    import torch

    problems = problems_before_loading(prepared)
    if problems:
        raise ExportError("cannot export:\n  - " + "\n  - ".join(problems))
    config = prepared.config
    if config.export_device == "auto" and config.device_map is None:
        config = config.with_values(device_map="auto")
    from tuneforge.train.context import RunContext
    from tuneforge.train.model import load_model

    ctx = RunContext(config, prepared.plan, prepared.manager, training=False)
    adapters = split_names(config.adapter_name_or_path)
    final_dir = Path(config.export_dir)
    quantizing = config.export_quantization_bit is not None
    out_dir = Path(tempfile.mkdtemp(prefix=".merged-", dir=final_dir.parent if final_dir.parent.exists() else None)) if quantizing else final_dir

    say(f"loading {config.model_name_or_path}" + (f" with adapter(s) {', '.join(adapters)}" if adapters else ""))
    model, tokenizer = load_model(ctx)
    template = ctx.template
    dtype = next(model.parameters()).dtype
    probes = _probe_ids(template, tokenizer, config)
    media = getattr(ctx, "media", None)
    probe_dir = Path(tempfile.mkdtemp(prefix="tuneforge-probe-")) if media is not None else None
    image_probe = _image_probe(ctx, template, tokenizer, config, probe_dir) if probe_dir is not None else None
    if image_probe is not None:  # a vision-language model: the checks also compare logits on an image prompt
        probes.append(image_probe)
    report: dict = {"model_name_or_path": config.model_name_or_path, "adapters": adapters, "template": template.name,
                    "dtype": _dtype_name(dtype), "export_dir": str(final_dir)}

    # base + adapter (unmerged) and base alone, before the merge changes the weights in place
    reference = _logits(model, probes)
    spec = prepared.plan.method.spec.adapter
    attached = bool(adapters) and spec is not None and not config.create_new_adapter
    if attached:
        base_logits = None
        if spec.disabled is not None:
            with spec.disabled(model):
                base_logits = _logits(model, probes)
        model = spec.merge(model)
        say(f"merged adapter {adapters[-1]} into the base model")
    else:  # no adapter, or every adapter was merged at load (create_new_adapter)
        base_logits = None
        say("no adapter to merge: exporting the model as it is" if not adapters else f"merged adapter(s) {', '.join(adapters)} at load")
    merged_logits = _logits(model, probes)

    # save
    out_dir.mkdir(parents=True, exist_ok=True)
    removed = _clean(out_dir)
    if removed:
        say(f"removed the weights of an earlier export in {out_dir}: {', '.join(removed)}")
    own_template = getattr(tokenizer, "chat_template", None)
    template.apply_to_tokenizer(tokenizer)
    if image_probe is not None:
        report["chat_template_source"] = _media_chat_template(tokenizer, own_template, template)
    tokenizer.padding_side = "left"  # for batched generation, as LLaMA-Factory exports it
    tokenizer.init_kwargs["padding_side"] = "left"  # transformers 5 saves init kwargs, not the attribute
    _fix_generation_config(model, template, tokenizer)
    shard = _shard_size(config)
    if config.export_legacy_format:
        files = weights.save_legacy(model, out_dir, shard)
    else:
        model.save_pretrained(out_dir, max_shard_size=shard)
        files = sorted(p.name for p in out_dir.glob("model*.safetensors"))
    if image_probe is not None:
        report["processor_files"] = _save_processor(str(config.model_name_or_path), out_dir)
    tokenizer.save_pretrained(out_dir)
    from .modelfile import ollama_modelfile

    (out_dir / "Modelfile").write_text(ollama_modelfile(template, tokenizer, config.default_system), encoding="utf-8")
    say(f"saved {len(files)} weight file(s) ({'.bin' if config.export_legacy_format else 'safetensors'}, at most {shard} each), "
        f"tokenizer with the '{template.name}' chat template, generation config and Modelfile to {out_dir}")
    report["files"] = files

    del model
    gc.collect()

    # verify
    failures: list[str] = []
    if adapters:
        report.update(_verify_changed(prepared, out_dir, base_logits, merged_logits, failures))
    report.update(_verify_reload(out_dir, probes, reference, dtype, template, failures,
                                 str(probe_dir / "probe.png") if image_probe is not None else None))
    if probe_dir is not None:
        shutil.rmtree(probe_dir, ignore_errors=True)
    (out_dir / "export_verification.json").write_text(json.dumps({**report, "failures": failures}, indent=2, ensure_ascii=False) + "\n",
                                                      encoding="utf-8")
    if failures:
        raise ExportError("export verification failed (the files are in %s, but do not use them):\n  - %s" % (out_dir, "\n  - ".join(failures)))
    say("verification passed")

    if quantizing:
        report.update(_quantize(prepared, ctx, out_dir, final_dir))
    if config.export_hub_model_id:
        report["hub"] = push_to_hub(final_dir, config)
    return report


def _verify_changed(prepared, out_dir: Path, base_logits, merged_logits, failures: list[str]) -> dict:
    config = prepared.config
    out: dict = {}
    base_files = weights.weight_map(config.model_name_or_path) if Path(config.model_name_or_path).is_dir() else {}
    if base_files:
        diff = weights.compare(base_files, weights.weight_map(out_dir))
        out["weights"] = {k: diff[k] for k in ("compared", "max_abs_diff", "max_at")} | {"changed": len(diff["changed"])}
        say(f"merged weights vs base: {len(diff['changed'])} of {diff['compared']} tensors changed, "
            f"max |diff| {diff['max_abs_diff']:.3e}" + (f" ({diff['max_at']})" if diff["max_at"] else ""))
        if not diff["changed"]:
            failures.append("the merged weights are identical to the base model's: the merge changed nothing (an adapter with "
                            "lora_alpha 0, or changes below the export dtype's precision); this export would silently be the "
                            "base model")
    else:
        say(f"merged weights vs base: skipped ({config.model_name_or_path} is not a local folder); comparing logits instead")
    if base_logits is not None:
        change = _max_diff(merged_logits, base_logits)
        out["logits_vs_base_max_abs_diff"] = change
        say(f"merged model vs base model: logits max |diff| {change:.3e}")
        if change == 0:
            failures.append("the merged model gives exactly the base model's logits: the adapter changed nothing")
    return out


def _verify_reload(out_dir: Path, probes, reference, dtype, template, failures: list[str], image_file: str | None = None) -> dict:
    """``image_file``: the last probe is an image prompt of that picture; the export is then reloaded as
    an image-text-to-text model, and its saved image processor must give the pixels training gave."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    name = _dtype_name(dtype)
    auto = AutoModelForImageTextToText if image_file else AutoModelForCausalLM
    try:
        reloaded = auto.from_pretrained(out_dir, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(out_dir)
    except Exception as exc:  # the point of the check: say exactly why plain transformers cannot load it
        failures.append(f"plain transformers cannot load the export ({auto.__name__}): {type(exc).__name__}: {exc}")
        return {"reload": "failed"}
    reloaded.eval()
    out: dict = {"reload_class": auto.__name__}
    if image_file:
        out.update(_verify_processor(out_dir, image_file, probes[-1][1], failures))
    logits = _logits(reloaded, probes)
    diff = _max_diff(logits, reference)
    scale = max(1.0, max(r.abs().max().item() for r in reference))
    tolerance = TOLERANCE.get(name, 1e-2) * scale
    agree = sum((a.argmax(-1) == b.argmax(-1)).sum().item() for a, b in zip(logits, reference))
    positions = sum(r.shape[0] for r in reference)
    what = f" (on {len(probes) - 1} text prompts and an image prompt)" if image_file else ""
    say(f"reloaded with {auto.__name__} ({name}): logits vs base + adapter max |diff| {diff:.3e}{what} "
        f"(tolerance {tolerance:.1e}); top token agrees at {agree}/{positions} positions")
    if diff > tolerance:
        failures.append(f"the reloaded export does not reproduce base + adapter: logits max |diff| {diff:.3e} > {tolerance:.1e}")
    out.update({"reload": "ok", "logits_vs_adapter_max_abs_diff": diff, "tolerance": tolerance,
                "top_token_agreement": f"{agree}/{positions}"})
    if image_file:
        image_diff = (logits[-1] - reference[-1]).abs().max().item()
        out["image_prompt_logits_vs_adapter_max_abs_diff"] = image_diff
        say(f"image prompt: reloaded export vs base + adapter logits max |diff| {image_diff:.3e}")
    conversation = CHECK_CONVERSATION
    try:
        rendered = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        same = rendered == template.render_prompt(tokenizer, conversation)
    except Exception as exc:
        same, rendered = False, f"{type(exc).__name__}: {exc}"
    out["chat_template_matches_training"] = same
    say("chat template: the saved tokenizer renders prompts exactly as training did" if same else
        f"warning: the saved tokenizer's chat template renders differently from the '{template.name}' template used in training")
    del reloaded
    return out


def _verify_processor(out_dir: Path, image_file: str, trained: dict, failures: list[str]) -> dict:
    """The export's own image processor (AutoImageProcessor, transformers alone) makes the pixels the
    training processor made for the probe image."""
    from PIL import Image
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(out_dir)
    except Exception as exc:
        failures.append(f"the export's image processor does not load with AutoImageProcessor: {type(exc).__name__}: {exc}")
        return {"image_processor": "failed"}
    with Image.open(image_file) as image:
        saved = processor(images=[image.convert("RGB")], return_tensors="pt")
    same = all(k in saved and saved[k].shape == v.shape and bool((saved[k] == v).all())
               for k, v in trained.items() if k != "mm_token_type_ids")
    say("image processor: the export's own gives the pixels training gave" if same else
        "image processor: the export's own gives different pixels from training's")
    if not same:
        failures.append("the export's image processor makes different pixel values from the one training used "
                        "(preprocessor_config.json differs); copy the model's preprocessor_config.json into the export")
    return {"image_processor": type(processor).__name__, "image_processor_matches_training": same}


def _quantize(prepared, ctx, merged_dir: Path, final_dir: Path) -> dict:
    entry = export_quantizer(prepared)
    bits = prepared.config.export_quantization_bit
    say(f"quantizing the verified export to {bits} bits with quantizer '{entry.name}' ({entry.provider})")
    final_dir.mkdir(parents=True, exist_ok=True)
    _clean(final_dir)
    try:
        entry.spec.export_quantize(ctx, str(merged_dir), str(final_dir))
        for path in merged_dir.iterdir():
            if path.is_file() and not (final_dir / path.name).exists() and path.name not in ("export_verification.json",) \
                    and not any(path.match(p) for p in weights.WEIGHT_PATTERNS):
                shutil.copy2(path, final_dir / path.name)
        shutil.copy2(merged_dir / "export_verification.json", final_dir / "export_verification.full_precision.json")
    finally:
        shutil.rmtree(merged_dir, ignore_errors=True)
    say(f"quantized export written to {final_dir}")
    return {"quantized": {"bits": bits, "quantizer": entry.name}}


def push_to_hub(folder: Path, config) -> str:
    """Upload the export folder (weights, tokenizer, Modelfile, verification report) to the hub."""
    from huggingface_hub import HfApi

    api = HfApi(token=config.hf_hub_token)
    repo = api.create_repo(config.export_hub_model_id, exist_ok=True, repo_type="model")
    api.upload_folder(folder_path=str(folder), repo_id=config.export_hub_model_id, repo_type="model",
                      commit_message="Upload model exported with tuneforge")
    url = str(getattr(repo, "url", f"https://huggingface.co/{config.export_hub_model_id}"))
    say(f"pushed {folder} to {url}")
    return url
