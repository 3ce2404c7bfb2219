"""Where ppo's scores come from: a reward model (``reward_model`` + ``reward_model_type``) and/or
reward functions (``reward_funcs``). Every source scores a batch of finished rollouts and returns one
float per reply; with several sources the scores add up.

- ``lora``: an adapter trained by ``rm`` on the policy's base model. It is loaded into the policy's
  own PEFT model as a second adapter named ``reward`` and switched on only while scoring, so no second
  copy of the base weights is held (which is why it needs a LoRA-family policy). Its value head is a
  separate small module.
- ``full``: a whole model folder written by ``rm`` (full or freeze tuning), plus optional
  ``reward_model_adapters`` and ``reward_model_quantization_bit``, loaded frozen beside the policy.
- ``api``: ``reward_model`` is a URL. Each step POSTs one JSON request::

      {"model": "tuneforge-ppo",
       "messages": ["<prompt and reply as one rendered text>", ...],
       "prompts": ["<prompt as the chat template rendered it>", ...],
       "completions": ["<reply text>", ...]}

  and reads ``{"scores": [float, ...]}`` back, one score per message, in order. ``messages`` is
  what LLaMA-Factory's api reward sends (the whole decoded text, special tokens kept); ``prompts``
  and ``completions`` are the same texts split, for servers that want them apart.
- reward functions: plugins of kind ``reward`` (``tuneforge plugins --kind reward``), called with the
  rendered prompts, the reply texts and the dataset's own reply as ``reference``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from tuneforge.errors import TuneforgeError
from tuneforge.plugin_manager import split_names

from ._value_head import VALUE_HEAD_FILE, CausalLMWithValueHead, ValueHead, hidden_size_of, read_value_head

#: The adapter name the lora reward model gets inside the policy's PEFT model.
REWARD_ADAPTER = "reward"
API_TIMEOUT_S = 120


@dataclass
class ScoringBatch:
    """Finished rollouts, as ids (for reward models) and as text (for functions and servers)."""

    sequences: torch.Tensor  # [B, P+R] prompt (left-padded) then reply (padded after its stop token)
    attention_mask: torch.Tensor  # [B, P+R]
    prompts: list[str]
    completions: list[str]
    full_texts: list[str]
    references: list[str]


# --- reward models --------------------------------------------------------------------------------------------


def reward_model_score(reward_model, batch: ScoringBatch) -> torch.Tensor:
    """A :class:`CausalLMWithValueHead`'s value at each row's last real token (the rm stage's scoring)."""
    from ._value_head import score

    device = next(reward_model.parameters()).device
    with torch.no_grad():
        return score(reward_model, batch.sequences.to(device), batch.attention_mask.to(device)).float().cpu()


class FullRewardModel:
    """``reward_model_type: full``: a frozen model of its own, with the head from its folder."""

    def __init__(self, ctx, path: str, adapters, quantization_bit, device):
        from ._models import load_frozen_model

        adapter_list = split_names(adapters)
        head_folder = Path(adapter_list[-1] if adapter_list else path)
        if not head_folder.is_dir():
            raise TuneforgeError(f"reward model {head_folder} is not a folder: train a reward model with stage: rm "
                                 "and set reward_model (or the last of reward_model_adapters) to its output_dir")
        head = read_value_head(head_folder)
        if head is None:
            raise TuneforgeError(f"reward model {head_folder} has no {VALUE_HEAD_FILE}: train the reward model with "
                                 "stage: rm (its output folder holds the head)")
        lm = load_frozen_model(ctx, path, adapters=adapter_list or None, quantization_bit=quantization_bit)
        self.model = CausalLMWithValueHead(lm)
        self.model.v_head.load_state_dict(head)
        self.model.requires_grad_(False)
        self.model.eval()
        if quantization_bit is None:
            self.model.to(device)

    def __call__(self, batch: ScoringBatch) -> torch.Tensor:
        return reward_model_score(self.model, batch)


@contextmanager
def active_adapter(peft_model, name: str):
    """Run with adapter ``name`` active, then restore the previous adapter and every parameter's
    ``requires_grad`` exactly (PEFT's set_adapter also changes which adapter trains)."""
    trainable = [(p, p.requires_grad) for p in peft_model.parameters()]
    previous = peft_model.active_adapter
    peft_model.set_adapter(name, inference_mode=True)
    try:
        yield
    finally:
        peft_model.set_adapter(previous)
        for param, flag in trainable:
            param.requires_grad_(flag)


class AdapterRewardModel:
    """``reward_model_type: lora``: the reward adapter inside the policy's PEFT model (see module doc)."""

    def __init__(self, policy_lm, path: str, base_model: str):
        folder = Path(path)
        if not (folder / "adapter_config.json").is_file():
            raise TuneforgeError(f"reward_model_type: lora, but {folder} holds no LoRA adapter (adapter_config.json); "
                                 "use reward_model_type: full for a reward model trained with full or freeze tuning")
        head = read_value_head(folder)
        if head is None:
            raise TuneforgeError(f"reward model {folder} has no {VALUE_HEAD_FILE}: train the reward model with stage: rm")
        trained_on = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
        if trained_on and not _same_model(trained_on, base_model):
            print(f"warning: the reward adapter {folder} was trained on {trained_on}, the policy is {base_model}; "
                  "a lora reward model scores correctly only on the base model it was trained on")
        device = next(policy_lm.parameters()).device
        policy_lm.load_adapter(str(folder), adapter_name=REWARD_ADAPTER, is_trainable=False, torch_device=str(device))
        self.policy_lm = policy_lm
        v_head = ValueHead(hidden_size_of(policy_lm))
        v_head.load_state_dict(head)
        # A second wrapper around the same LM object: it shares every weight, and adds only the head.
        self.model = CausalLMWithValueHead(policy_lm, v_head=v_head)
        self.model.v_head.requires_grad_(False)

    def __call__(self, batch: ScoringBatch) -> torch.Tensor:
        was_training = self.policy_lm.training
        self.policy_lm.eval()
        try:
            with active_adapter(self.policy_lm, REWARD_ADAPTER):
                return reward_model_score(self.model, batch)
        finally:
            self.policy_lm.train(was_training)


def _same_model(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a.rstrip("/") == b.rstrip("/")


class ApiRewardModel:
    """``reward_model_type: api``: a server scores the texts (JSON contract in the module doc)."""

    def __init__(self, url: str):
        self.url = url

    def __call__(self, batch: ScoringBatch) -> torch.Tensor:
        body = json.dumps({"model": "tuneforge-ppo", "messages": batch.full_texts, "prompts": batch.prompts,
                           "completions": batch.completions}).encode("utf-8")
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=API_TIMEOUT_S) as response:
                answer = json.loads(response.read().decode("utf-8"))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise TuneforgeError(f"reward_model (api) {self.url}: no scores: {exc}") from None
        scores = answer.get("scores") if isinstance(answer, dict) else None
        if not isinstance(scores, list) or len(scores) != len(batch.full_texts):
            raise TuneforgeError(f"reward_model (api) {self.url}: expected {{\"scores\": [...]}} with "
                                 f"{len(batch.full_texts)} numbers, got {str(answer)[:200]}")
        try:
            return torch.tensor([float(s) for s in scores], dtype=torch.float32)
        except (TypeError, ValueError):
            raise TuneforgeError(f"reward_model (api) {self.url}: the scores are not all numbers: {scores[:8]}") from None


# --- reward functions -----------------------------------------------------------------------------------------


class RewardFunctions:
    """The ``reward_funcs`` plugins, their scores summed per reply."""

    def __init__(self, ctx, entries):
        self.ctx = ctx
        self.entries = list(entries)

    def __call__(self, batch: ScoringBatch) -> torch.Tensor:
        total = torch.zeros(len(batch.completions), dtype=torch.float32)
        for entry in self.entries:
            scores = entry.spec.score(self.ctx, batch.prompts, batch.completions, reference=batch.references)
            if len(scores) != len(batch.completions):
                raise TuneforgeError(f"reward function {entry.name} returned {len(scores)} scores for "
                                     f"{len(batch.completions)} replies")
            total += torch.tensor([float(s) for s in scores], dtype=torch.float32)
        return total


# --- all of them ----------------------------------------------------------------------------------------------


class Scorer:
    """Every configured source; ``__call__`` returns the summed score of each rollout ([B], float32, CPU)."""

    def __init__(self, sources: list):
        self.sources = sources

    def __call__(self, batch: ScoringBatch) -> torch.Tensor:
        return sum(source(batch) for source in self.sources)


def build_scorer(ctx, policy_lm, device) -> Scorer:
    config = ctx.config
    sources = []
    if config.reward_model:
        kind = config.reward_model_type
        if kind == "api":
            sources.append(ApiRewardModel(str(config.reward_model)))
        elif kind == "lora":
            if not hasattr(policy_lm, "load_adapter") or not hasattr(policy_lm, "peft_config"):
                raise TuneforgeError("reward_model_type: lora loads the reward adapter into the policy's LoRA model, "
                                     "but the policy is not a LoRA model; use reward_model_type: full")
            sources.append(AdapterRewardModel(policy_lm, str(config.reward_model), str(config.model_name_or_path)))
        else:
            sources.append(FullRewardModel(ctx, str(config.reward_model), config.reward_model_adapters,
                                           config.reward_model_quantization_bit, device))
    if ctx.plan.rewards:
        sources.append(RewardFunctions(ctx, ctx.plan.rewards))
    if not sources:
        raise TuneforgeError("ppo needs a reward: set reward_model or reward_funcs")
    return Scorer(sources)
