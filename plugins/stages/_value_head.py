"""A causal LM with a scalar head: the reward model (rm) and the PPO critic.

The head reads the last hidden state of every position. A reward is the value at a row's last
real token; PPO's critic uses the values of every generated token.

Saved beside the model (a full checkpoint or a LoRA adapter) as ``value_head.safetensors`` with the
keys ``v_head.summary.weight`` / ``v_head.summary.bias`` (the layout LLaMA-Factory's reward models
use), so a reward model trained by ``rm`` is a normal model folder plus one small file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

VALUE_HEAD_FILE = "value_head.safetensors"


def hidden_size_of(model) -> int:
    config = model.config
    size = getattr(config, "hidden_size", None)
    if size is None and hasattr(config, "get_text_config"):
        size = getattr(config.get_text_config(), "hidden_size", None)
    if size is None:
        raise ValueError(f"cannot find the hidden size of {type(model).__name__} for a value head")
    return int(size)


class ValueHead(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


class CausalLMWithValueHead(nn.Module):
    """``pretrained_model`` (plain or PEFT-wrapped) and ``v_head``; forward returns (logits, values).

    The head is always trainable when the wrapper trains: it starts random (or from a saved head)
    whatever the method does to the LM's own weights.
    """

    def __init__(self, pretrained_model, v_head: ValueHead | None = None):
        super().__init__()
        self.pretrained_model = pretrained_model
        self.v_head = v_head or ValueHead(hidden_size_of(pretrained_model))
        device = next(pretrained_model.parameters()).device
        self.v_head.to(device=device, dtype=torch.float32)

    # What the Trainer and PEFT ask of the model they hold.
    @property
    def config(self):
        return self.pretrained_model.config

    @property
    def supports_gradient_checkpointing(self) -> bool:
        inner = getattr(self.pretrained_model, "get_base_model", lambda: self.pretrained_model)()
        return bool(getattr(inner, "supports_gradient_checkpointing", False))

    @property
    def generation_config(self):
        """Read and aligned with the tokenizer's special tokens by the Trainer, as the config is."""
        return getattr(self.pretrained_model, "generation_config", None)

    def get_input_embeddings(self):
        return self.pretrained_model.get_input_embeddings()

    def get_output_embeddings(self):
        """The LM head (not the value head): method plugins exclude it from the layers they target."""
        return self.pretrained_model.get_output_embeddings()

    def activation_checkpointing_enable(self, **kwargs):
        """The Trainer's call (transformers 5); the LM also makes its input embeddings require grad,
        which a PEFT model with frozen embeddings needs for gradients to reach the adapters."""
        return self.pretrained_model.activation_checkpointing_enable(**kwargs)

    def gradient_checkpointing_enable(self, **kwargs):
        return self.pretrained_model.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_disable(self):
        return self.pretrained_model.gradient_checkpointing_disable()

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        kwargs.pop("labels", None)
        out = self.pretrained_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            output_hidden_states=True, return_dict=True, use_cache=False, **kwargs,
        )
        return out.logits, self.v_head(out.hidden_states[-1])

    def value_head_state(self) -> dict[str, torch.Tensor]:
        return {f"v_head.{k}": v.detach().cpu().contiguous() for k, v in self.v_head.state_dict().items()}

    def save_pretrained(self, output_dir: str | Path, state_dict: dict | None = None, is_main_process: bool = True,
                        **kwargs) -> None:
        """The LM (adapter or full weights) as ``save_pretrained`` writes it, plus the head.

        ``state_dict`` is this wrapper's (keys ``pretrained_model.*`` and ``v_head.*``), as the Trainer
        gathers it under FSDP or DeepSpeed: it is split between the LM and the head.
        """
        from safetensors.torch import save_file

        output_dir = Path(output_dir)
        head_state = self.value_head_state()
        if state_dict is not None:
            prefix = "pretrained_model."
            gathered = {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if k.startswith("v_head.")}
            head_state = gathered or head_state
            kwargs["state_dict"] = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
        self.pretrained_model.save_pretrained(output_dir, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            save_file(head_state, str(output_dir / VALUE_HEAD_FILE))

    def load_value_head(self, folder: str | Path) -> bool:
        """Load ``folder``'s saved head; False when the folder has none."""
        state = read_value_head(folder)
        if state is None:
            return False
        self.v_head.load_state_dict(state)
        return True


def read_value_head(folder: str | Path) -> dict[str, torch.Tensor] | None:
    """The head's state dict (keys ``summary.weight``/``summary.bias``) from a saved folder, or None."""
    path = Path(folder) / VALUE_HEAD_FILE
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    return {k.removeprefix("v_head."): v for k, v in load_file(str(path)).items() if k.startswith("v_head.")}


def last_token_values(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's value at its last real token (the last 1 of the mask, whichever side the padding is)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.long() * positions).argmax(dim=1)
    return values.gather(1, last.unsqueeze(1)).squeeze(1)


class ValueHeadCheckpoints:
    """Mixed into a Trainer that holds a :class:`CausalLMWithValueHead` (rm, ppo): every save writes the
    LM as its method saves it (adapter or full weights) plus the head, and a resume loads both.

    ``value_head_stage`` names the stage in the error for a checkpoint without a head;
    ``value_head_save_kwargs(wrapper)`` adds ``save_pretrained`` arguments (ppo saves only its own adapter).
    """

    value_head_stage = "this"

    def value_head_save_kwargs(self, wrapper) -> dict:
        return {}

    def _save(self, output_dir=None, state_dict=None):
        import os

        from transformers.trainer import TRAINING_ARGS_NAME

        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save and not getattr(self, "is_distributed_loading_by_transformers", False):
            return
        wrapper = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        wrapper.save_pretrained(output_dir, state_dict=state_dict, is_main_process=self.args.should_save,
                                **self.value_head_save_kwargs(wrapper))
        if not self.args.should_save:
            return
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """The Trainer's loading for the LM (an adapter or full weights, sharded or not), then the head.

        FSDP saved the whole wrapper in its own format, head included: the Trainer loads it as is.
        """
        if self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        wrapper = self.accelerator.unwrap_model(self.model if model is None else model)
        super()._load_from_checkpoint(resume_from_checkpoint, wrapper.pretrained_model)
        if not wrapper.load_value_head(resume_from_checkpoint):
            from tuneforge.errors import TuneforgeError

            raise TuneforgeError(f"{resume_from_checkpoint} has no {VALUE_HEAD_FILE}: it was not written by the "
                                 f"{self.value_head_stage} stage, so {self.value_head_stage} cannot resume from it "
                                 "(set overwrite_output_dir: true to start afresh)")


def score(reward_model, input_ids, attention_mask, **media):
    """Each row's reward (float32, shape [B]): the value at its last real token.

    Positions count real tokens only, so a row scores the same whether it is padded on the right
    (training), on the left, or around a generated reply (ppo). Gradients flow when the caller
    allows them (training); wrap the call in ``torch.no_grad()`` to only score. ``media``: the rows'
    media inputs (pixel_values, image_grid_thw, mm_token_type_ids): a multimodal model then places
    the tokens itself (its positions depend on the images, e.g. Qwen2-VL's 3-D rope).
    """
    position_ids = None if media else (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    _, values = reward_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             **media, **_last_logits_only(reward_model))
    return last_token_values(values, attention_mask).float()


def _last_logits_only(reward_model) -> dict:
    """``logits_to_keep=1`` where the LM takes it: a score needs no logits, and all of them cost
    batch x length x vocabulary floats."""
    import inspect

    while hasattr(reward_model, "module"):  # DDP and other training wrappers
        reward_model = reward_model.module
    lm = reward_model.pretrained_model
    lm = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(lm.forward).parameters else {}
