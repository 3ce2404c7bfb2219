"""grpo: Group Relative Policy Optimization on trl's GRPOTrainer, scored by reward-function plugins.

For every prompt the model writes ``num_generations`` completions; the reward functions named in
``reward_funcs`` score them, and each completion's advantage is its reward relative to the others of
its group. No reward model and no value head: the group is the baseline.

What tuneforge adds around trl:

- prompts come from the data pipeline (data kind ``prompt``): rendered by the planned chat template
  and cut nowhere. trl receives each prompt as text (what reward functions and completion logs see)
  and generates from the pipeline's exact token ids, looked up by that text, so trl's own
  tokenisation never re-parses the markup or adds a second BOS;
- generation stops at the template's stop words as well as at the tokenizer's EOS;
- the trainer is the planned method's (its optimizer, e.g. LoRA+ or GaLore) and runs through
  ``train_and_save``: resume, Ctrl-C, trainer_log.jsonl, the output files;
- the model arrives already wrapped by the method (a PEFT model for LoRA); trl does not wrap it again.
"""

from __future__ import annotations

import os
from functools import lru_cache

from tuneforge import ConfigKey, StageSpec, hookimpl

from ._preference import PREF_BETA

LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo")

#: reward_funcs is not here: every stage with ``uses_rewards`` owns it (tuneforge.specs.REWARD_FUNCS_KEY).
KEYS = (
    ConfigKey("reward_weights", (str, list), None,
              "Weight of each reward function, in reward_funcs order (comma list of numbers); unset: 1 each."),
    ConfigKey("num_generations", int, 8,
              "Completions written per prompt (the group size G); at least 2. The generation batch, "
              "per_device_train_batch_size x gradient_accumulation_steps x processes, must be a multiple of it."),
    ConfigKey("num_iterations", int, 1,
              "Optimisation passes over each generated batch before generating again (mu in the GRPO paper)."),
    PREF_BETA,  # grpo: the KL coefficient; unset: 0.0 (trl's default), no reference model. DeepSeek-R1 used 0.001.
    ConfigKey("grpo_epsilon", float, 0.2, "Clipping range of the policy ratio (trl's epsilon)."),
    ConfigKey("grpo_loss_type", str, "dapo",
              "How token losses are averaged (trl's loss_type): dapo (over the tokens of the whole batch), "
              "grpo (per sequence, then over sequences), dr_grpo, bnpo, cispo, sapo.",
              choices=LOSS_TYPES),
    ConfigKey("grpo_scale_rewards", str, "group",
              "Divide advantages by the reward std of the group (group), of the batch (batch), or not (none).",
              choices=("group", "batch", "none")),
    ConfigKey("mask_truncated_completions", bool, False,
              "Leave completions cut at max_new_tokens out of the loss (DAPO's recommendation)."),
)

#: Keyword arguments trl adds to every reward-function call that are not dataset columns.
_TRL_EXTRA_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments", "completion_ids")


def _processes() -> int:
    """Processes the run will have: WORLD_SIZE under a launcher, else what `tuneforge train` will
    launch (NNODES x NPROC_PER_NODE), else one."""
    if os.environ.get("WORLD_SIZE"):
        return int(os.environ["WORLD_SIZE"])
    try:
        return max(1, int(os.environ.get("NNODES") or 1) * int(os.environ.get("NPROC_PER_NODE") or 1))
    except ValueError:
        return 1


def validate(config, plan) -> list[str]:
    """What trl would refuse, or what cannot work, said before a model is loaded."""
    from tuneforge.plugin_manager import split_names
    from tuneforge.train.checks import evaluation_problems

    problems = evaluation_problems(config)
    rewards = list(dict.fromkeys(split_names(config.reward_funcs)))  # the plan drops repeated names too
    if not rewards:
        problems.append("reward_funcs is not set: grpo scores every completion with reward functions; name them, "
                        "e.g. reward_funcs: accuracy,think_format (`tuneforge plugins --kind reward` lists them)")
    weights = split_names(config.reward_weights)
    if weights:
        bad = [w for w in weights if not _is_number(w)]
        if bad:
            problems.append(f"reward_weights must be numbers, not {', '.join(bad)}")
        elif rewards and len(weights) != len(rewards):
            problems.append(f"reward_weights has {len(weights)} value(s) but reward_funcs names {len(rewards)} "
                            "function(s): give one weight per reward function")
    groups = config.num_generations
    if groups is None or groups < 2:
        problems.append(f"num_generations must be at least 2, not {groups}: an advantage is a completion's reward "
                        "relative to the other completions of its prompt")
    else:
        processes = _processes()
        per_device = config.per_device_train_batch_size
        accumulation = config.gradient_accumulation_steps
        batch = per_device * accumulation * processes
        if batch % groups:
            problems.append(
                f"the generation batch (per_device_train_batch_size {per_device} x gradient_accumulation_steps "
                f"{accumulation} x {processes} process(es) = {batch} completions) must hold whole groups of "
                f"num_generations = {groups}: make it a multiple of {groups}, e.g. per_device_train_batch_size: "
                f"{_next_fitting(per_device, groups, accumulation * processes)}, or lower num_generations")
        if _evaluates(config):
            eval_batch = config.per_device_eval_batch_size * processes
            if eval_batch % groups:
                problems.append(
                    f"evaluation generates num_generations = {groups} completions per prompt, but the eval batch "
                    f"(per_device_eval_batch_size {config.per_device_eval_batch_size} x {processes} process(es)) is "
                    f"{eval_batch}: make per_device_eval_batch_size a multiple of {groups}")
    if config.is_set("pref_beta") and config.pref_beta is not None and config.pref_beta < 0:
        problems.append(f"pref_beta (the KL coefficient) must be 0 or more, not {config.pref_beta}")
    if config.num_iterations is not None and config.num_iterations < 1:
        problems.append(f"num_iterations must be at least 1, not {config.num_iterations}")
    if config.predict_with_generate or config.get("do_predict"):
        problems.append("grpo does not write predictions: remove do_predict/predict_with_generate, then predict with "
                        "the trained model (stage: sft, do_predict: true, predict_with_generate: true, "
                        "adapter_name_or_path or model_name_or_path set to this output_dir)")
    if not config.do_sample:
        problems.append("do_sample: false makes every completion of a group the same, so every advantage is 0 and "
                        "nothing trains; remove it (grpo always samples)")
    if config.temperature is None or config.temperature <= 0:
        problems.append(f"temperature must be above 0 for sampling, not {config.temperature}")
    if config.max_new_tokens is None or config.max_new_tokens < 1:
        problems.append(f"max_new_tokens (the completion length limit) must be at least 1, not {config.max_new_tokens}")
    if config.streaming:
        problems.append("streaming: grpo samples each prompt num_generations times from an indexed dataset; "
                        "set streaming: false (use max_samples to limit the prompts read)")
    if config.get("auto_find_batch_size"):
        problems.append("auto_find_batch_size would shrink the batch below whole groups of num_generations; "
                        "remove it and set per_device_train_batch_size yourself")
    return problems


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _next_fitting(per_device: int, groups: int, multiplier: int) -> int:
    """The smallest per-device batch at or above ``per_device`` that makes whole groups."""
    size = max(per_device, 1)
    while (size * multiplier) % groups:
        size += 1
    return size


def _evaluates(config) -> bool:
    strategy = config.get("eval_strategy")
    return bool(config.get("val_size") or config.get("eval_dataset") or config.get("do_eval")
                or strategy not in (None, "no"))


# --- the run -------------------------------------------------------------------------------------


def run(ctx):
    from tuneforge.data.dataset import build_datasets
    from tuneforge.train.hf_trainer import method_trainer_class, train_and_save

    data = build_datasets(ctx, "prompt")
    tokenizer = ctx.tokenizer
    train, prompt_ids = trl_prompt_dataset(data.train, tokenizer)
    evaluation = None
    if data.eval is not None:
        evaluation, eval_prompt_ids = trl_prompt_dataset(data.eval, tokenizer)
        prompt_ids.update(eval_prompt_ids)
    trainer_class = method_trainer_class(_grpo_trainer_class())
    try:
        trainer = trainer_class(
            model=ctx.model,
            reward_funcs=[trl_reward_function(ctx, entry) for entry in ctx.plan.rewards],
            args=grpo_arguments(ctx),
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tokenizer,
            prompt_token_ids=prompt_ids,
            stop_token_ids=ctx.template.stop_token_ids(tokenizer),
        )
    except ValueError as exc:  # trl's own checks of the arguments against the model and data
        from tuneforge.errors import TuneforgeError

        raise TuneforgeError(f"the GRPO trainer refused this setup: {exc}") from None
    trainer.tuneforge_ctx = ctx
    return train_and_save(ctx, trainer)


def trl_prompt_dataset(split, tokenizer):
    """The pipeline's prompt rows as trl wants them: a ``prompt`` text column (special tokens kept, so
    the template's markup survives) and a ``reference`` column (the dataset's reply, "" when none);
    plus the prompt text -> token ids map the trainer generates from."""
    from datasets import Dataset

    prompt_ids = [list(ids) for ids in split["input_ids"]]
    prompts = tokenizer.batch_decode(prompt_ids, skip_special_tokens=False)
    references = tokenizer.batch_decode([list(ids) for ids in split["reference_ids"]], skip_special_tokens=True)
    ids_by_text = dict(zip(prompts, prompt_ids))
    return Dataset.from_dict({"prompt": prompts, "reference": references}), ids_by_text


def trl_reward_function(ctx, entry):
    """A reward-function plugin in trl's calling convention, named after the plugin so trl logs
    ``rewards/<name>/mean`` and ``rewards/<name>/std``."""
    score = entry.spec.score
    name = entry.name

    def reward(prompts, completions, **kwargs):
        from tuneforge.errors import TuneforgeError

        columns = {k: v for k, v in kwargs.items() if k not in _TRL_EXTRA_KWARGS}
        scores = list(score(ctx, list(prompts), list(completions), **columns))
        if len(scores) != len(completions):
            raise TuneforgeError(f"reward function '{name}' ({entry.provider}) returned {len(scores)} scores for "
                                 f"{len(completions)} completions; it must return one per completion")
        return [float(s) for s in scores]

    reward.__name__ = reward.__qualname__ = name
    return reward


def grpo_arguments(ctx):
    """trl's GRPOConfig: tuneforge's training arguments (the same as every stage's) plus the grpo keys."""
    import dataclasses

    from trl import GRPOConfig

    from tuneforge.errors import TuneforgeError
    from tuneforge.plugin_manager import split_names
    from tuneforge.train.hf_trainer import training_arguments

    config = ctx.config
    # trl counts prompt and completion tokens itself; transformers' counter would look for input_ids
    # in batches that hold none.
    base = training_arguments(ctx, include_num_input_tokens_seen="no")
    accepted = {f.name for f in dataclasses.fields(GRPOConfig) if f.init}
    kwargs = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init and f.name in accepted}
    weights = split_names(config.reward_weights)
    kwargs.update(
        num_generations=config.num_generations,
        num_iterations=config.num_iterations,
        max_completion_length=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k or 0,
        repetition_penalty=config.repetition_penalty,
        beta=float(config.pref_beta) if config.is_set("pref_beta") else 0.0,
        epsilon=config.grpo_epsilon,
        loss_type=config.grpo_loss_type,
        scale_rewards=config.grpo_scale_rewards,
        mask_truncated_completions=config.mask_truncated_completions,
        reward_weights=[float(w) for w in weights] if weights else None,
        shuffle_dataset=not config.disable_shuffling,
        use_vllm=False,
        log_completions=False,
    )
    try:
        return GRPOConfig(**kwargs)
    except (ValueError, TypeError) as exc:
        raise TuneforgeError(f"invalid grpo arguments: {exc}") from None


@lru_cache(maxsize=None)
def _grpo_trainer_class():
    """trl's GRPOTrainer generating from the pipeline's token ids and stopping at the template's stop words
    (built on first use: importing trl is slow)."""
    from trl import GRPOTrainer

    class PipelinePromptGRPOTrainer(GRPOTrainer):
        def __init__(self, *args, prompt_token_ids: dict[str, list[int]], stop_token_ids: list[int], **kwargs):
            self.prompt_token_ids = prompt_token_ids
            super().__init__(*args, **kwargs)
            stops = list(dict.fromkeys([*self.eos_token_ids, *stop_token_ids]))
            if stops != self.eos_token_ids:
                self.eos_token_ids = stops
                self.generation_kwargs["eos_token_id"] = stops
                self.generation_config.eos_token_id = stops

        def _tokenize_prompts(self, prompts: list):
            """The pipeline's ids for each prompt text; text from elsewhere is tokenised without adding
            special tokens, because the rendered prompt already holds them."""
            unknown = [p for p in prompts if p not in self.prompt_token_ids]
            extra = dict(zip(unknown, self._tokenizer(unknown, add_special_tokens=False)["input_ids"])) if unknown else {}
            return [list(self.prompt_token_ids.get(p) or extra[p]) for p in prompts], None, {}

    return PipelinePromptGRPOTrainer


@hookimpl
def tuneforge_stages():
    return [
        StageSpec(
            name="grpo",
            description="Group Relative Policy Optimization: sample a group of replies per prompt, learn from "
                        "their rewards relative to each other (reward_funcs).",
            keys=KEYS,
            run=run,
            validate=validate,
            data_kind="prompt",
            unplanned="its generation and extra models",
            uses_rewards=True,
        )
    ]
