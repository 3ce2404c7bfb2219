"""The PPO training loop, on top of transformers' Trainer.

The Trainer supplies what every stage shares: the optimizer (the method plugin's, through
``method_trainer_class``) and LR scheduler, mixed precision, callbacks (``trainer_log.jsonl``, Ctrl-C),
checkpoints with optimizer/scheduler/RNG state, ``save_model`` and the final metrics. Only the inner
loop is PPO's own. One PPO step:

1. take ``per_device_train_batch_size x gradient_accumulation_steps x ppo_buffer_size`` prompts;
2. roll out: the policy writes one reply per prompt (the generation keys; sampling), ending at the
   template's stop tokens;
3. score every reply (reward model and/or reward functions), optionally normalised (ppo_score_norm);
4. with no gradient: the policy's log-probabilities and values, and the reference's log-probabilities;
5. per-token rewards = -kl_coef x (log p - log p_ref), plus the score on the reply's last token
   (optionally whitened, ppo_whiten_rewards); GAE advantages (whitened) and returns;
6. ``ppo_epochs`` passes over the rollouts in shuffled minibatches of ``per_device_train_batch_size``,
   ``gradient_accumulation_steps`` of them per optimizer update: clipped policy loss plus
   ``ppo_vf_coef`` x clipped value loss, gradients clipped to ``max_grad_norm``;
7. the LR scheduler steps once, and the adaptive KL coefficient moves toward ``ppo_target``.

So ``max_steps`` counts PPO steps, each with ``ppo_epochs x ppo_buffer_size`` optimizer updates.

Resume restores the policy (LM and value head), optimizer, scheduler, RNG, step, the KL coefficient
and the score statistics (``ppo_state.json`` in each checkpoint); step N always takes the same prompts.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, fields

import torch

from tuneforge.errors import TuneforgeError

from . import _ppo_math as ppo_math
from ._ppo_rewards import ScoringBatch
from ._value_head import ValueHeadCheckpoints

#: Written into every checkpoint beside trainer_state.json: what PPO adds to a resumable state.
PPO_STATE_FILE = "ppo_state.json"


@dataclass(frozen=True)
class PPOSettings:
    """The ppo_* keys, read once."""

    buffer_size: int
    epochs: int
    score_norm: bool
    whiten_rewards: bool
    kl_coef: float
    target: float | None
    gamma: float
    lam: float
    cliprange: float
    cliprange_value: float
    vf_coef: float

    @classmethod
    def from_config(cls, config) -> "PPOSettings":
        return cls(
            buffer_size=config.ppo_buffer_size, epochs=config.ppo_epochs, score_norm=config.ppo_score_norm,
            whiten_rewards=config.ppo_whiten_rewards, kl_coef=config.ppo_kl_coef,
            target=config.ppo_target if config.ppo_adaptive_kl else None, gamma=config.ppo_gamma,
            lam=config.ppo_lam, cliprange=config.ppo_cliprange, cliprange_value=config.ppo_cliprange_value,
            vf_coef=config.ppo_vf_coef,
        )


def generation_config(ctx):
    """The generation keys (max_new_tokens, do_sample, temperature, top_p, top_k, repetition_penalty)
    for rollouts: one reply per prompt, stopping at the template's stop tokens."""
    from transformers import GenerationConfig

    config, tokenizer = ctx.config, ctx.tokenizer
    stop_ids = ctx.template.stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    kwargs = dict(max_new_tokens=config.max_new_tokens, do_sample=config.do_sample, num_beams=1,
                  repetition_penalty=config.repetition_penalty, eos_token_id=stop_ids, pad_token_id=pad_id)
    if config.do_sample:
        kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
    return GenerationConfig(**kwargs)


# --- the data ------------------------------------------------------------------------------------------------


class PromptSchedule:
    """Which prompts PPO step ``n`` rolls out, as a pure function of ``n``.

    Each epoch is a fresh permutation of the dataset (seeded with ``seed`` and the epoch; in order with
    disable_shuffling) cut into full batches; a dataset smaller than one batch is one batch. A resumed
    run therefore takes exactly the prompts the interrupted one would have.
    """

    def __init__(self, dataset, collator, batch_size: int, seed: int, shuffle: bool):
        self.dataset, self.collator = dataset, collator
        self.batch_size = min(batch_size, len(dataset))
        self.seed, self.shuffle = seed, shuffle
        self.steps_per_epoch = len(dataset) // self.batch_size

    def max_steps(self, args) -> int:
        if args.max_steps > 0:
            return args.max_steps
        return max(1, math.ceil(args.num_train_epochs * self.steps_per_epoch))

    def batch(self, step: int) -> dict:
        epoch, index = divmod(step, self.steps_per_epoch)
        if self.shuffle:
            order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(len(self.dataset))
        rows = order[index * self.batch_size:(index + 1) * self.batch_size].tolist()
        return self.collator([self.dataset[i] for i in rows])


# --- rollouts ------------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """A batch of finished rollouts and everything PPO computes from them before updating.

    ``sequences``/``attention_mask``/``position_ids`` span prompt + reply ([B, P+R]); the per-token
    tensors ([B, R]) cover the reply positions only.
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    replies: torch.Tensor
    reply_mask: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor

    def __len__(self) -> int:
        return len(self.sequences)

    def select(self, rows: torch.Tensor) -> "Rollout":
        return Rollout(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


def reply_mask(replies: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """1 on each reply's tokens up to and including its first stop token, 0 on the padding after it."""
    is_stop = torch.isin(replies, torch.tensor(stop_ids, device=replies.device)).long()
    stops_before = is_stop.cumsum(dim=1) - is_stop
    return (stops_before == 0).long()


def position_ids_of(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting real tokens only, so left padding does not shift them."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def reply_logits(logits_with_last: torch.Tensor) -> torch.Tensor:
    """The logits that predict the reply tokens, from a forward run with ``logits_to_keep=R+1``."""
    return logits_with_last[:, :-1]


# --- the reference policy ------------------------------------------------------------------------------------


class AdapterDisabledReference:
    """The policy's own LoRA model with its adapters switched off: the base model it started from,
    without holding a second copy of it."""

    def __init__(self, peft_model, disabled):
        self.peft_model = peft_model
        self.disabled = disabled  # the method's AdapterSpec.disabled

    def logits(self, **inputs) -> torch.Tensor:
        with self.disabled(self.peft_model):
            return self.peft_model(**inputs).logits


class FrozenReference:
    """A separate frozen model (freeze and full tuning change the policy's own weights)."""

    def __init__(self, model):
        self.model = model

    def logits(self, **inputs) -> torch.Tensor:
        return self.model(**inputs).logits


def build_reference(ctx, device):
    lm = ctx.model
    adapter = ctx.plan.method.spec.adapter
    if adapter is not None and adapter.disabled is not None:
        return AdapterDisabledReference(lm, adapter.disabled)
    from ._models import load_frozen_model

    config = ctx.config
    model = load_frozen_model(ctx, config.model_name_or_path, adapters=config.adapter_name_or_path,
                              quantization_bit=config.quantization_bit)
    if config.quantization_bit is None:
        model.to(device)
    return FrozenReference(model)


# --- the trainer ---------------------------------------------------------------------------------------------

_TRAINER_CLASS = None


def ppo_trainer_class():
    """The trainer class, built on first use so this module imports without transformers' Trainer."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is None:
        from transformers import Trainer

        _TRAINER_CLASS = type("PPOTrainer", (PPOLoop, Trainer), {})
    return _TRAINER_CLASS


class PPOLoop(ValueHeadCheckpoints):
    """Mixed into transformers' Trainer: PPO's ``_inner_training_loop`` (see the module doc), and saving
    and loading of the policy's value head. Set before ``train()``: ``ctx``, ``settings``,
    ``reference``, ``scorer``, ``rollout_config``."""

    ctx = None
    settings: PPOSettings | None = None
    reference = None
    scorer = None
    rollout_config = None

    # -- the loop -------------------------------------------------------------------------------------------

    def _inner_training_loop(self, batch_size=None, args=None, resume_from_checkpoint=None, trial=None,
                             ignore_keys_for_eval=None):
        args = self.args
        settings = self.settings
        self.accelerator.free_memory()
        rollout_size = args.per_device_train_batch_size * args.gradient_accumulation_steps * settings.buffer_size
        schedule = PromptSchedule(self.train_dataset, self.data_collator, rollout_size, args.seed,
                                  shuffle=args.train_sampling_strategy != "sequential")
        max_steps = schedule.max_steps(args)
        self._init_training_state(max_steps, schedule.steps_per_epoch, math.ceil(max_steps / schedule.steps_per_epoch),
                                  resume_from_checkpoint, trial)
        model, _ = self._prepare_for_training(max_steps, None, resume_from_checkpoint)
        self.kl_controller = ppo_math.AdaptiveKLController(settings.kl_coef, settings.target)
        self.score_moments = ppo_math.RunningMoments()
        if resume_from_checkpoint is not None:
            self._load_ppo_state(resume_from_checkpoint)
            self._load_rng_state(resume_from_checkpoint)

        start_time = time.time()
        self._initial_num_input_tokens_seen = self.state.num_input_tokens_seen
        self._initial_global_step = self.state.global_step
        self._tr_loss = torch.tensor(0.0, device=args.device)
        self._total_loss_scalar = 0.0
        self._globalstep_last_logged = self.state.global_step
        model.zero_grad()
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        unlogged: list[dict] = []
        while self.state.global_step < max_steps:
            self.control = self.callback_handler.on_step_begin(args, self.state, self.control)
            stats = self.ppo_step(model, schedule.batch(self.state.global_step))
            self.state.global_step += 1
            self.state.epoch = self.state.global_step / schedule.steps_per_epoch
            self._total_loss_scalar += stats["loss"]
            unlogged.append(stats)
            self.control = self.callback_handler.on_step_end(args, self.state, self.control)
            if self.state.global_step % schedule.steps_per_epoch == 0:
                self.control = self.callback_handler.on_epoch_end(args, self.state, self.control)
            if self.control.should_log:
                self.log({**mean_stats(unlogged), "learning_rate": self._get_learning_rate()}, start_time)
                unlogged = []
            if self.control.should_save:
                self._save_checkpoint(model, trial)
                self.control = self.callback_handler.on_save(args, self.state, self.control)
            if self.control.should_training_stop:
                break
        return self._finalize_training(trial, max_steps * rollout_size, start_time)

    def ppo_step(self, model, batch: dict) -> dict:
        """Roll out one batch of prompts, update on it, adapt the KL coefficient; the step's statistics."""
        kl_coef = self.kl_controller.coef
        rollout, rollout_stats = self.make_rollout(model, batch, kl_coef)
        stats = self.optimize(model, rollout)
        self.lr_scheduler.step()
        self.kl_controller.update(rollout_stats["kl"], n=len(rollout))
        self.state.num_input_tokens_seen += int(rollout.attention_mask.sum())
        return {**stats, **rollout_stats, "kl_coef": kl_coef}

    # -- rollouts -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def make_rollout(self, model, batch: dict, kl_coef: float) -> tuple[Rollout, dict]:
        device = self.args.device
        prompts = batch["input_ids"].to(device)
        prompt_mask = batch["attention_mask"].to(device)
        replies = self.generate(prompts, prompt_mask)
        mask = reply_mask(replies, self.rollout_config.eos_token_id)
        sequences = torch.cat([prompts, replies], dim=1)
        attention_mask = torch.cat([prompt_mask, mask], dim=1)
        position_ids = position_ids_of(attention_mask)

        raw_scores = self.scorer(self.scoring_batch(sequences, attention_mask, prompts, prompt_mask, replies, mask,
                                                    batch["reference_ids"])).to(device)
        scores = raw_scores
        if self.settings.score_norm:
            self.score_moments.update(raw_scores)
            scores = self.score_moments.normalize(raw_scores)

        inputs = dict(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids)
        logprobs, values = self.policy_logprobs_and_values(model, inputs, replies)
        ref_logprobs = self.reference_logprobs(inputs, replies)

        reply_mask_f = mask.float()
        rewards = ppo_math.kl_penalized_rewards(scores, logprobs, ref_logprobs, reply_mask_f, kl_coef)
        if self.settings.whiten_rewards:
            rewards = ppo_math.masked_whiten(rewards, reply_mask_f, shift_mean=False)
        advantages, returns = ppo_math.gae(rewards, values, reply_mask_f, self.settings.gamma, self.settings.lam)
        advantages = ppo_math.masked_whiten(advantages, reply_mask_f)
        rollout = Rollout(sequences, attention_mask, position_ids, replies, reply_mask_f, logprobs, values,
                          advantages, returns)
        kl_per_reply = ((logprobs - ref_logprobs) * reply_mask_f).sum(dim=1)
        stats = {
            "reward": raw_scores.mean().item(),
            "kl": kl_per_reply.mean().item(),
            "response_length": reply_mask_f.sum(dim=1).mean().item(),
        }
        return rollout, stats

    def generate(self, prompts: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """The reply tokens ([B, R]): sampled by the policy LM, padded after each reply's stop token."""
        lm = self.accelerator.unwrap_model(self.model).pretrained_model
        was_training = lm.training
        lm.eval()
        try:
            out = lm.generate(input_ids=prompts, attention_mask=prompt_mask, generation_config=self.rollout_config)
        finally:
            lm.train(was_training)
        return out[:, prompts.shape[1]:]

    def scoring_batch(self, sequences, attention_mask, prompts, prompt_mask, replies, mask, reference_ids) -> ScoringBatch:
        tokenizer = self.processing_class
        prompt_texts = [tokenizer.decode(ids[m.bool()], skip_special_tokens=False) for ids, m in zip(prompts, prompt_mask)]
        skip = bool(self.ctx.config.skip_special_tokens)
        completions = [tokenizer.decode(ids[m.bool()], skip_special_tokens=skip) for ids, m in zip(replies, mask)]
        reply_markup = [tokenizer.decode(ids[m.bool()], skip_special_tokens=False) for ids, m in zip(replies, mask)]
        references = [tokenizer.decode(ids, skip_special_tokens=True) for ids in reference_ids]
        return ScoringBatch(sequences=sequences, attention_mask=attention_mask, prompts=prompt_texts,
                            completions=completions, full_texts=[p + r for p, r in zip(prompt_texts, reply_markup)],
                            references=references)

    def _chunks(self, n: int):
        size = self.args.per_device_train_batch_size
        return [slice(i, i + size) for i in range(0, n, size)]

    def policy_logprobs_and_values(self, model, inputs: dict, replies: torch.Tensor):
        """The rollout policy's log p of each reply token and its values, in eval mode, by minibatch."""
        model.eval()
        logprobs, values = [], []
        reply_len = replies.shape[1]
        for rows in self._chunks(len(replies)):
            logits, vals = model(**{k: v[rows] for k, v in inputs.items()}, logits_to_keep=reply_len + 1)
            logprobs.append(ppo_math.token_logprobs(reply_logits(logits), replies[rows]))
            values.append(vals[:, -reply_len - 1:-1].float())
        return torch.cat(logprobs), torch.cat(values)

    def reference_logprobs(self, inputs: dict, replies: torch.Tensor) -> torch.Tensor:
        reply_len = replies.shape[1]
        out = []
        for rows in self._chunks(len(replies)):
            logits = self.reference.logits(**{k: v[rows] for k, v in inputs.items()}, logits_to_keep=reply_len + 1,
                                           use_cache=False)
            out.append(ppo_math.token_logprobs(reply_logits(logits), replies[rows]))
        return torch.cat(out)

    # -- updates --------------------------------------------------------------------------------------------

    def optimize(self, model, rollout: Rollout) -> dict:
        """``ppo_epochs`` shuffled passes; one optimizer update per ``per_device x grad_accum`` rollouts."""
        args = self.args
        model.train()
        per_update = args.per_device_train_batch_size * args.gradient_accumulation_steps
        totals: dict[str, list[float]] = {}
        for _ in range(self.settings.epochs):
            order = torch.randperm(len(rollout), device=rollout.sequences.device)
            for start in range(0, len(rollout), per_update):
                update_rows = order[start:start + per_update]
                for rows in self._chunks(len(update_rows)):
                    minibatch = rollout.select(update_rows[rows])
                    with self.compute_loss_context_manager():
                        loss, stats = self.ppo_loss(model, minibatch)
                    self.accelerator.backward(loss * len(minibatch) / len(update_rows))
                    for key, value in stats.items():
                        totals.setdefault(key, []).append(value)
                grad_norm = self._clip_grad_norm(model) if args.max_grad_norm else None
                self.optimizer.step()
                self.optimizer.zero_grad()
                if grad_norm is not None:
                    totals.setdefault("grad_norm", []).append(float(grad_norm))
        return {key: sum(values) / len(values) for key, values in totals.items()}

    def ppo_loss(self, model, batch: Rollout) -> tuple[torch.Tensor, dict]:
        settings = self.settings
        reply_len = batch.replies.shape[1]
        logits, values = model(input_ids=batch.sequences, attention_mask=batch.attention_mask,
                               position_ids=batch.position_ids, logits_to_keep=reply_len + 1)
        logits = reply_logits(logits)
        values = values[:, -reply_len - 1:-1].float()
        logprobs = ppo_math.token_logprobs(logits, batch.replies)
        policy_loss, clip_fraction = ppo_math.clipped_policy_loss(logprobs, batch.logprobs, batch.advantages,
                                                                  batch.reply_mask, settings.cliprange)
        value_loss = ppo_math.clipped_value_loss(values, batch.values, batch.returns, batch.reply_mask,
                                                 settings.cliprange_value)
        loss = policy_loss + settings.vf_coef * value_loss
        entropy = ppo_math.masked_mean(ppo_math.token_entropy(logits.detach()), batch.reply_mask)
        stats = {"loss": loss.item(), "policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                 "entropy": entropy.item(), "clip_fraction": clip_fraction.item()}
        return loss, stats

    # -- saving and resuming --------------------------------------------------------------------------------

    value_head_stage = "ppo"

    def value_head_save_kwargs(self, wrapper) -> dict:
        """A lora reward model lives in the same PEFT model as a second adapter: save only the policy's."""
        lm = wrapper.pretrained_model
        return {"selected_adapters": [lm.active_adapter]} if hasattr(lm, "peft_config") else {}

    def _save_checkpoint(self, model, trial):
        """The Trainer's checkpoint plus ppo_state.json, written first: a checkpoint is complete only
        once trainer_state.json exists, which the Trainer writes last."""
        folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
        if self.args.should_save:
            os.makedirs(folder, exist_ok=True)
            state = {"kl_controller": self.kl_controller.state_dict(), "score_moments": self.score_moments.state_dict()}
            with open(os.path.join(folder, PPO_STATE_FILE), "w", encoding="utf-8") as f:
                json.dump(state, f)
        super()._save_checkpoint(model, trial)

    def _load_ppo_state(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, PPO_STATE_FILE)
        if not os.path.isfile(path):
            raise TuneforgeError(f"{checkpoint} has no {PPO_STATE_FILE}: it was not written by the ppo stage, so ppo "
                                 "cannot resume from it (set overwrite_output_dir: true to start afresh)")
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        self.kl_controller.load_state_dict(state["kl_controller"])
        self.score_moments.load_state_dict(state["score_moments"])


def mean_stats(records: list[dict]) -> dict:
    """Each statistic averaged over the steps since the last log."""
    keys = dict.fromkeys(k for r in records for k in r)
    return {k: sum(r[k] for r in records if k in r) / sum(1 for r in records if k in r) for k in keys}
