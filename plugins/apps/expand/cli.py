"""`tuneforge expand`: LLaMA Pro block expansion, the command LLaMA-Factory runs as scripts/llama_pro.py.

``tuneforge expand --model_name_or_path M --output_dir OUT --num_expand N`` copies the model's decoder
layers and, after every ``num_layers / N`` of them, inserts a copy of the last one whose output
projections (attention and MLP) are zero: each new block adds nothing to the residual stream, so the
expanded model gives the original's logits until it is trained. Train it with ``finetuning_type:
freeze``, ``use_llama_pro: true`` and ``freeze_trainable_layers: N`` (only the new blocks train).
See docs/training.md (use_llama_pro).
"""

from __future__ import annotations

from tuneforge import CommandSpec, hookimpl


def register(parser):
    parser.add_argument("--model_name_or_path", "--model", required=True, help="the model to expand (folder or hub id)")
    parser.add_argument("--output_dir", required=True, help="where the expanded model is saved")
    parser.add_argument("--num_expand", type=int, default=8,
                        help="how many blocks to add; must divide the number of layers (default 8, as LLaMA-Factory)")
    parser.add_argument("--shard_size", default="5GB", help="largest weight file (default 5GB)")
    parser.add_argument("--save_safetensors", type=_yes_no, default=True,
                        help="LLaMA-Factory's flag; only true (safetensors) works with transformers 5")


def _yes_no(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise ValueError(text)


def run(args) -> int:
    from tuneforge.plugins.apps.expand.expander import expand_model

    report = expand_model(args.model_name_or_path, args.output_dir, args.num_expand,
                          shard_size=args.shard_size, safe_serialization=args.save_safetensors)
    print(f"expanded {args.model_name_or_path} from {report['old_layers']} to {report['new_layers']} layers "
          f"(new blocks at {report['new_ids']}); saved to {args.output_dir}")
    print("train only the new blocks with:\n"
          f"  model_name_or_path: {args.output_dir}\n  finetuning_type: freeze\n"
          f"  freeze_trainable_layers: {args.num_expand}\n  use_llama_pro: true")
    return 0


@hookimpl
def tuneforge_commands():
    return [CommandSpec(name="expand",
                        description="LLaMA Pro: add zero-output copies of decoder blocks (train them with use_llama_pro)",
                        register=register, run=run)]
