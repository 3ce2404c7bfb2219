"""`tuneforge export CONFIG`: merge LoRA adapter(s) into the base model, save it, and verify the result.

Keys (LLaMA-Factory's): ``export_dir``, ``export_size`` (GB per shard), ``export_device`` (cpu or
auto), ``export_legacy_format`` (.bin), ``export_hub_model_id``, ``infer_dtype``, and
``export_quantization_bit`` + ``export_quantization_dataset`` for a quantized export through a
quantizer plugin. See docs/export.md.
"""

from __future__ import annotations

import sys

from tuneforge import CommandSpec, hookimpl


def register(parser):
    parser.add_argument("config", help="YAML config (model_name_or_path, adapter_name_or_path, template, export_dir, ...)")


def run(args) -> int:
    from tuneforge.plan import prepare

    prepared = prepare(args.config, args.overrides, blocked=args.disable_plugin, reads_data=False)
    for warning in prepared.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    from tuneforge.plugins.apps.export.exporter import run_export

    run_export(prepared)
    return 0


@hookimpl
def tuneforge_commands():
    return [CommandSpec(name="export", description="merge adapters into the base, save and verify a standalone model (export_dir)",
                        register=register, run=run)]
