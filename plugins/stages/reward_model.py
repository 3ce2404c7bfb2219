"""rm: reward modelling. The LM gets a scalar value head, trained on preference pairs so that the chosen
reply scores higher than the rejected one (loss ``-log sigmoid(r_chosen - r_rejected)``).

A reply's reward is the head's value at the row's last real token. The LM trains as the method says
(LoRA: the adapter; full; freeze: the unfrozen layers) and the head always trains. ``output_dir`` (and
every checkpoint) holds the LM as the method saves it plus ``value_head.safetensors``: that folder is
what ``ppo`` takes as ``reward_model`` (:func:`load_reward_model`).

Evaluation reports ``eval_loss`` and ``eval_accuracy`` (the fraction of pairs whose chosen reply
scores higher); ``do_predict`` writes every eval pair's two scores to ``generated_predictions.jsonl``.

This module is imported whenever plugins are listed (`tuneforge check`): torch and transformers are
imported only inside the functions that train or score.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tuneforge import StageSpec, hookimpl
from tuneforge.plugin_helpers import split_names
from tuneforge.ranks import is_main_process

#: Where ``do_predict`` writes each eval pair's scores (LLaMA-Factory's file name for it).
PREDICTIONS_FILE = "generated_predictions.jsonl"
REWARD_MODEL_TYPES = ("full", "lora")

logger = logging.getLogger(__name__)


# --- check ----------------------------------------------------------------------------------------------------


def validate(config, plan) -> list[str]:
    from tuneforge.train.checks import evaluation_problems

    problems = evaluation_problems(config)
    if config.get("predict_with_generate"):
        problems.append("predict_with_generate: only sft generates replies; rm scores the eval pairs with do_predict "
                        "(their scores go to generated_predictions.jsonl): remove predict_with_generate")
    has_eval_data = bool(config.get("val_size")) or bool(config.get("eval_dataset"))
    if config.get("do_predict") and not has_eval_data:
        problems.append("do_predict scores the evaluation pairs, but there are none: set val_size (a fraction or a "
                        "count of pairs to hold out) or eval_dataset")
    if not plan.method.spec.trains_added_modules:
        problems.append(f"{plan.method.spec.label} picks the parameters it trains among the model's own and never "
                        "trains the value head rm adds, which starts random: use finetuning_type lora, freeze or full "
                        "(GaLore and APOLLO work)")
    return problems


# --- the trainer ----------------------------------------------------------------------------------------------


def pair_rewards(model, inputs: dict):
    """(chosen, rejected) rewards of a pairwise batch: 2B rows, the B chosen first (PairwiseCollator)."""
    from ._preference import media_inputs

    rewards = score(model, inputs["input_ids"], inputs["attention_mask"], **media_inputs(inputs))
    return rewards.chunk(2)


def pairwise_loss(chosen, rejected):
    """Bradley-Terry: the negative log-probability that the chosen reply is preferred."""
    import torch.nn.functional as F

    return -F.logsigmoid(chosen - rejected).mean()


def pair_accuracy(prediction) -> dict:
    """compute_metrics: the fraction of pairs whose chosen reply scores strictly higher.

    The predictions are the ``[chosen, rejected]`` rewards of each pair (from prediction_step).
    """
    import numpy as np

    rewards = np.asarray(prediction.predictions).reshape(-1, 2)
    return {"accuracy": float((rewards[:, 0] > rewards[:, 1]).mean())}


_TRAINER_CLASS = None


def reward_trainer_class():
    """transformers' Trainer taught to hold a :class:`CausalLMWithValueHead` (built on first use, so this
    module imports without transformers)."""
    global _TRAINER_CLASS
    if _TRAINER_CLASS is not None:
        return _TRAINER_CLASS
    import torch
    from transformers import Trainer

    from ._value_head import ValueHeadCheckpoints

    class RewardTrainer(ValueHeadCheckpoints, Trainer):
        """The pairwise loss; eval ``loss`` and ``accuracy``; saves and resumes the LM and its value head."""

        value_head_stage = "rm"

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # The loss is a mean over the batch's pairs, not a sum over tokens for the Trainer to divide:
            # it must scale it for gradient accumulation itself.
            self.model_accepts_loss_kwargs = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            chosen, rejected = pair_rewards(model, inputs)
            loss = pairwise_loss(chosen, rejected)
            return (loss, torch.stack([chosen, rejected], dim=1)) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            """Loss and each pair's [chosen, rejected] rewards; the label of every pair is 0 (chosen is
            preferred). The batch's token ``labels`` mean nothing here, so the Trainer's default (which
            looks for a model loss) does not apply."""
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                loss, rewards = self.compute_loss(model, inputs, return_outputs=True)
            if prediction_loss_only:
                return loss.detach(), None, None
            return loss.detach(), rewards.detach(), torch.zeros(len(rewards), dtype=torch.long, device=rewards.device)

        def _issue_warnings_after_load(self, load_result):
            """Keys the LM's checkpoint lacked or had too many of; a tied weight (an LM head shared with the
            embeddings, left out of the saved file) is loaded through the weight it shares."""
            lm = self.accelerator.unwrap_model(self.model).pretrained_model
            params = dict(lm.named_parameters(remove_duplicate=False))
            loaded = [params[name] for name in params.keys() - set(load_result.missing_keys)]
            missing = [name for name in load_result.missing_keys
                       if not any(params.get(name) is param for param in loaded)]
            if missing:
                logger.warning(f"the checkpoint lacked these weights of the model: {missing}")
            if load_result.unexpected_keys:
                logger.warning(f"the checkpoint had weights the model does not: {load_result.unexpected_keys}")

        def _load_best_model(self):
            """load_best_model_at_end: the best checkpoint's LM and head, as a resume loads them."""
            if self.is_deepspeed_enabled or self.is_fsdp_enabled:
                return super()._load_best_model()
            self._load_from_checkpoint(self.state.best_model_checkpoint)

    _TRAINER_CLASS = RewardTrainer
    return RewardTrainer


def build_reward_trainer(ctx, data, reward_model):
    """``build_trainer`` (the method's optimizer, tuneforge's arguments) over the LM with its head;
    ``ctx.model`` stays the LM the method made, for the rest of the run (method hooks such as PiSSA's
    conversion)."""
    from tuneforge.train.hf_trainer import build_trainer

    return build_trainer(ctx, data, base=reward_trainer_class(), model=reward_model, compute_metrics=pair_accuracy)


# --- the stage ------------------------------------------------------------------------------------------------


def run(ctx):
    """Train (or, with do_train: false, only evaluate) the reward model; ``ctx.extras["reward_model"]``
    holds it afterwards (``ctx.model`` stays the LM the method made)."""
    from tuneforge.data.dataset import build_datasets
    from tuneforge.train.hf_trainer import train_and_save

    data = build_datasets(ctx, "pairwise")
    reward_model = wrap_with_value_head(ctx)
    trainer = build_reward_trainer(ctx, data, reward_model)
    ctx.extras["reward_model"] = reward_model
    metrics = train_and_save(ctx, trainer)
    if ctx.config.do_predict and data.eval is not None:
        metrics.update(predict(ctx, trainer, data.eval))
    return metrics


def wrap_with_value_head(ctx):
    """ctx.model with a value head: the head of the reward model the run starts from, if it starts from
    one (the last of ``adapter_name_or_path``, else ``model_name_or_path``, holding value_head.safetensors),
    so a trained reward model can be evaluated or trained further; a random one otherwise."""
    from tuneforge.plugins.stages._value_head import CausalLMWithValueHead

    reward_model = CausalLMWithValueHead(ctx.model)
    adapters = split_names(ctx.config.get("adapter_name_or_path"))
    source = adapters[-1] if adapters else str(ctx.config.model_name_or_path)
    if reward_model.load_value_head(source) and is_main_process():
        print(f"value head loaded from {source}")
    head_size = sum(p.numel() for p in reward_model.v_head.parameters())
    for key in ("trainable_parameters", "total_parameters"):  # as run_manifest.json reports them
        if ctx.extras.get(key) is not None:
            ctx.extras[key] += head_size
    return reward_model


def predict(ctx, trainer, dataset) -> dict:
    """Score every eval pair: ``generated_predictions.jsonl`` (one ``{"chosen", "rejected"}`` per pair, in
    the dataset's order) and ``predict_results.json`` (``predict_loss``, ``predict_accuracy``, ...)."""
    from tuneforge.train.outputs import save_metrics

    result = trainer.predict(dataset, metric_key_prefix="predict")
    if trainer.is_world_process_zero():
        path = ctx.output_dir / PREDICTIONS_FILE
        with path.open("w", encoding="utf-8") as f:
            for chosen, rejected in result.predictions.reshape(-1, 2).tolist():
                f.write(json.dumps({"chosen": round(chosen, 4), "rejected": round(rejected, 4)}) + "\n")
        save_metrics(ctx.output_dir, "predict", result.metrics)
        print(f"scored {len(result.predictions)} pair(s): {path}")
    return result.metrics


# --- the trained reward model, for ppo and for scoring -------------------------------------------------------


def load_reward_model(ctx, path, reward_model_type: str = "full"):
    """A frozen, eval-mode :class:`CausalLMWithValueHead` from a folder the rm stage wrote.

    ``full``: the folder is a whole model (full or freeze tuning). ``lora``: it is a LoRA adapter,
    loaded onto the base model named in its adapter_config.json (``base_model_name_or_path``), or onto
    ``model_name_or_path`` when that is not recorded. Either way the folder holds value_head.safetensors.
    The model loads through the run's loader in its compute dtype; the head stays in fp32.
    """
    from tuneforge.errors import TuneforgeError
    from tuneforge.plugins.stages._models import load_frozen_model
    from tuneforge.plugins.stages._value_head import VALUE_HEAD_FILE, CausalLMWithValueHead, read_value_head

    folder = Path(path)
    if reward_model_type not in REWARD_MODEL_TYPES:
        raise TuneforgeError(f"reward_model_type: {reward_model_type!r} cannot be loaded as a trained reward model; "
                             f"use one of {', '.join(REWARD_MODEL_TYPES)}")
    if not folder.is_dir():
        raise TuneforgeError(f"reward model {folder} is not a folder (train one with stage: rm)")
    head_state = read_value_head(folder)
    if head_state is None:
        raise TuneforgeError(f"reward model {folder} has no {VALUE_HEAD_FILE}: train it with stage: rm")
    adapter_config = folder / "adapter_config.json"
    if reward_model_type == "lora":
        if not adapter_config.is_file():
            raise TuneforgeError(f"reward_model_type: lora, but {folder} holds no LoRA adapter (adapter_config.json); "
                                 "use reward_model_type: full for a reward model trained with full or freeze tuning")
        base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        lm = load_frozen_model(ctx, base or ctx.config.model_name_or_path, adapters=[str(folder)])
    else:
        if adapter_config.is_file() and not (folder / "config.json").is_file():
            raise TuneforgeError(f"reward model {folder} is a LoRA adapter: set reward_model_type: lora")
        lm = load_frozen_model(ctx, str(folder))
    reward_model = CausalLMWithValueHead(lm)
    reward_model.v_head.load_state_dict(head_state)
    reward_model.eval()
    reward_model.requires_grad_(False)
    return reward_model


def score(reward_model, input_ids, attention_mask, **media):
    """Each row's reward: the value at its last real token (``_value_head.score``, shared with ppo;
    imported here only when called, since it needs torch); ``media``: the rows' media inputs."""
    from ._value_head import score as value_at_last_token

    return value_at_last_token(reward_model, input_ids, attention_mask, **media)


@hookimpl
def tuneforge_stages():
    return [StageSpec(
        name="rm",
        description="Reward modelling: a value head learns to score chosen replies above rejected ones.",
        run=run, validate=validate, data_kind="pairwise", pairs_rows=True, lm_loss=False, takes_media=True,
    )]
