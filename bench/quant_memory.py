"""Weight memory and peak RSS of one LoRA training step: fp32 base vs bitsandbytes 8-bit, 4-bit and HQQ 4-bit.

    python bench/quant_memory.py [--model DIR] [--batch 4] [--seq 256] [--variants fp32,bnb8,bnb4,hqq4]

DIR defaults to the small benchmark model (`tuneforge tiny-model DIR --size small`, built offline and
cached). Each variant runs in its own process, loaded through tuneforge's own path (plan -> loader ->
quantizer -> LoRA on every linear layer but the head, r=8), then takes one training step by hand
(forward with labels, backward, AdamW step; no gradient checkpointing) on random tokens.

Columns:
* weights: bytes of every parameter and buffer, plus the quantization state held outside them
  (bnb 4-bit absmax/code, 8-bit SCB, HQQ scale/zero), so quantized and full-precision are comparable;
  "linear" is the part in the decoder's linear layers (what the quantizer shrinks; embeddings and the
  head stay in full precision).
* +anon / +file: resident memory the load added, private (anonymous) and file-backed. Every variant
  imports the same libraries first, pages in every weight, and hands freed memory back (malloc_trim).
  transformers maps the checkpoint file (safetensors mmap) and keeps the mapping while any tensor
  still points into it (the embeddings, the head): full-precision weights stay file-backed pages, and
  with a quantizer the pages it read to quantize stay resident too, as clean page cache the kernel
  can drop under pressure. So on CPU, RSS understates what quantization saves; "weights" is exact.
* RSS after load; the peak RSS during the step alone (Linux:
  VmHWM reset through /proc/self/clear_refs after loading; elsewhere the process peak), and how far it
  rose above the RSS after load (activations, gradients, optimizer state).
* load peak: the process's peak RSS while loading (HQQ loads the full-precision model first).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

VARIANTS = {
    "fp32": [],
    "bnb8": ["quantization_bit=8", "quantization_method=bitsandbytes"],
    "bnb4": ["quantization_bit=4", "quantization_method=bitsandbytes"],
    "hqq4": ["quantization_bit=4", "quantization_method=hqq", "hqq_group_size=64"],
}
LINEARS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
MIB = 1024 * 1024


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _peak_kib() -> int:
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _trim() -> None:
    """Hand memory freed while loading (full-precision weights replaced by quantized ones) back to the OS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def weight_bytes(model) -> tuple[int, int]:
    """(all weight bytes, bytes in the linear layers of the decoder), quantization state included."""
    import torch

    def size(t) -> int:
        return t.numel() * t.element_size() if isinstance(t, torch.Tensor) else 0

    def extra(module) -> int:
        total = 0
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)  # bnb 4-bit
        while state is not None:
            total += size(getattr(state, "absmax", None)) + size(getattr(state, "code", None))
            state = getattr(state, "state2", None)
        total += size(getattr(weight, "SCB", None))  # bnb 8-bit row scales
        meta = getattr(module, "meta", None)  # HQQLinear keeps scale/zero in a dict
        if isinstance(meta, dict):
            total += sum(size(v) for v in meta.values())
        return total

    seen: set[int] = set()
    total = linear = 0
    for name, module in model.named_modules():
        own = 0
        for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                own += size(tensor)
        own += extra(module)
        total += own
        leaf = name.split(".")[-1]
        if leaf in LINEARS.split(",") or (leaf == "base_layer" and name.split(".")[-2] in LINEARS.split(",")):
            linear += own
    return total, linear


def run_variant(name: str, model_dir: str, batch: int, seq: int) -> dict:
    import torch

    from tuneforge.plan import prepare
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.train.context import RunContext
    from tuneforge.train.model import load_model

    # Every variant imports the same libraries before it measures, so RSS differences are the model's.
    import importlib

    for module in ("transformers.models.llama.modeling_llama", "peft", "bitsandbytes", "hqq.core.quantize"):
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    _trim()
    before_anon, before_file = _status_kib("RssAnon") or 0, _status_kib("RssFile") or 0
    torch.manual_seed(0)
    overrides = [f"model_name_or_path={model_dir}", "template=llama3", "finetuning_type=lora", "lora_rank=8",
                 f"lora_target={LINEARS}", *VARIANTS[name]]
    prepared = prepare(None, overrides, manager=PluginManager(autoload=False))
    ctx = RunContext(prepared.config, prepared.plan, prepared.manager, training=True)
    model, _ = load_model(ctx)
    model.train()
    load_peak = _peak_kib()
    with torch.no_grad():  # page in weights that safetensors left memory-mapped, as the step would
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.float().sum() if tensor.is_floating_point() else tensor.sum()
    _trim()
    weights, linear = weight_bytes(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    after_load = _status_kib("VmRSS") or 0
    anon, mapped = (_status_kib("RssAnon") or 0) - before_anon, (_status_kib("RssFile") or 0) - before_file
    exact = _reset_peak()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step_peak = _peak_kib()
    return {
        "variant": name, "weights_mib": weights / MIB, "linear_mib": linear / MIB, "anon_mib": anon / 1024,
        "file_mib": mapped / 1024, "rss_after_load_mib": after_load / 1024,
        "step_peak_rss_mib": step_peak / 1024, "load_peak_rss_mib": load_peak / 1024, "step_peak_exact": exact,
        "trainable": sum(p.numel() for p in params), "loss": float(loss),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the cached small llama3 benchmark model)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args()

    if args.one:
        print("RESULT " + json.dumps(run_variant(args.one, args.model, args.batch, args.seq)))
        return 0

    model_dir = args.model
    if model_dir is None:
        from tuneforge.plugins.apps.tiny_model.builder import cached_tiny_model

        model_dir = str(cached_tiny_model("llama3", "small"))
    rows = []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if name not in VARIANTS:
            parser.error(f"unknown variant {name}; choose from {', '.join(VARIANTS)}")
        result = subprocess.run([sys.executable, __file__, "--one", name, "--model", model_dir, "--batch", str(args.batch),
                                 "--seq", str(args.seq)], capture_output=True, text=True, env=env)
        found = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
        if result.returncode != 0 or not found:
            print(f"{name}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(found[-1][len("RESULT "):]))

    print(f"model: {model_dir}; one LoRA step (r=8, all decoder linears), batch {args.batch} x {args.seq} tokens, "
          "AdamW, no gradient checkpointing; MiB")
    headers = ("variant", "weights", "linear", "+anon", "+file", "RSS after load", "step peak RSS", "step over load",
               "load peak RSS", "loss")
    table = [headers] + [(
        r["variant"], f"{r['weights_mib']:.1f}", f"{r['linear_mib']:.1f}", f"{r['anon_mib']:.0f}", f"{r['file_mib']:.0f}",
        f"{r['rss_after_load_mib']:.0f}",
        f"{r['step_peak_rss_mib']:.0f}" + ("" if r["step_peak_exact"] else "*"),
        f"{r['step_peak_rss_mib'] - r['rss_after_load_mib']:.0f}", f"{r['load_peak_rss_mib']:.0f}",
        f"{r['loss']:.3f}") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    for row in table:
        print("  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    if not all(r["step_peak_exact"] for r in rows):
        print("* process peak (this system cannot reset the peak after loading)")
    base = next((r for r in rows if r["variant"] == "fp32"), None)
    if base:
        for r in rows:
            if r is not base:
                print(f"{r['variant']}: linear weights {base['linear_mib'] / max(r['linear_mib'], 1e-9):.1f}x smaller, "
                      f"all weights {base['weights_mib'] / max(r['weights_mib'], 1e-9):.1f}x smaller than fp32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
