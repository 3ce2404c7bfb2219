"""ppo: reinforcement learning from a reward with Proximal Policy Optimization, our own loop.

The policy is the trained model with a value head (the critic shares the policy's body); it writes
replies to the dataset's prompts, a reward model (``reward_model``) and/or reward functions
(``reward_funcs``) score them, and PPO raises the score while a per-token KL penalty keeps the policy
near the reference model (the model training started from). See _ppo_trainer.py for one step, and
_ppo_rewards.py for the reward sources and the api contract.

The reference costs no memory with a LoRA-family policy (the same model with the adapter switched off);
freeze and full tuning load a frozen copy of ``model_name_or_path``.

This module is imported whenever plugins are listed (`tuneforge check`): torch and transformers are
imported only by the functions that train.
"""

from __future__ import annotations

from tuneforge import ConfigKey, StageSpec, hookimpl

from tuneforge.plugin_helpers import split_names, world_size

#: reward_model_type's values (LLaMA-Factory's): an rm adapter, a whole rm model, or a scoring server.
REWARD_MODEL_TYPES = ("lora", "full", "api")

KEYS = (
    ConfigKey("reward_model", str, None,
              "ppo: the reward model: a folder written by stage rm (reward_model_type lora or full), or the URL of a "
              "scoring server (reward_model_type api)."),
    ConfigKey("reward_model_type", str, "lora",
              "ppo: lora (an rm adapter, loaded into the LoRA policy's own model: needs a LoRA-family policy), full "
              "(a whole rm model folder, loaded beside the policy) or api (a server; see docs/stages.md).",
              choices=REWARD_MODEL_TYPES),
    ConfigKey("reward_model_adapters", (str, list), None,
              "ppo, reward_model_type full: adapters to load onto the reward model (the last one holds the value head)."),
    ConfigKey("reward_model_quantization_bit", int, None,
              "ppo, reward_model_type full: load the reward model quantized to this many bits (quantization_method)."),
    ConfigKey("ppo_buffer_size", int, 1,
              "ppo: minibatch groups per PPO step; a step rolls out per_device_train_batch_size x "
              "gradient_accumulation_steps x ppo_buffer_size prompts."),
    ConfigKey("ppo_epochs", int, 4, "ppo: optimisation passes over each step's rollouts."),
    ConfigKey("ppo_score_norm", bool, False,
              "ppo: normalise scores with the running mean and standard deviation of every score so far."),
    ConfigKey("ppo_target", float, 6.0,
              "ppo: the KL (summed over a reply, in nats) the adaptive KL coefficient steers toward."),
    ConfigKey("ppo_whiten_rewards", bool, False, "ppo: whiten the per-token rewards (unit variance) before GAE."),
    ConfigKey("ppo_kl_coef", float, 0.2,
              "ppo (tuneforge): initial coefficient of the per-token KL penalty to the reference model."),
    ConfigKey("ppo_adaptive_kl", bool, True,
              "ppo (tuneforge): adapt the KL coefficient toward ppo_target; false keeps ppo_kl_coef fixed."),
    ConfigKey("ppo_gamma", float, 1.0, "ppo (tuneforge): discount factor of GAE."),
    ConfigKey("ppo_lam", float, 0.95, "ppo (tuneforge): lambda of GAE (bias/variance of the advantages)."),
    ConfigKey("ppo_cliprange", float, 0.2, "ppo (tuneforge): clip range of the policy ratio."),
    ConfigKey("ppo_cliprange_value", float, 0.2, "ppo (tuneforge): clip range of the value updates."),
    ConfigKey("ppo_vf_coef", float, 0.1, "ppo (tuneforge): weight of the value loss in the total loss."),
)


def reward_problems(config, plan) -> list[str]:
    out = []
    reward_model, kind = config.get("reward_model"), config.get("reward_model_type")
    if not reward_model and not split_names(config.get("reward_funcs")):
        out.append("ppo needs a reward: set reward_model (a model trained with stage rm, or a scoring server with "
                   "reward_model_type: api) or reward_funcs (reward function plugins, e.g. contains)")
    if not reward_model:
        return out
    is_url = str(reward_model).startswith(("http://", "https://"))
    if kind == "api" and not is_url:
        out.append(f"reward_model_type: api needs reward_model to be the server's URL (http://...), not {reward_model}")
    if kind != "api" and is_url:
        out.append(f"reward_model {reward_model} is a URL: set reward_model_type: api")
    if kind == "lora" and plan.method.spec.adapter is None:
        out.append(f"reward_model_type: lora loads the reward adapter into the policy's LoRA model, but the policy is "
                   f"trained with {plan.method.name}, which has no adapters: use finetuning_type lora, or a reward "
                   "model of type full")
    if kind != "full":
        for key in ("reward_model_adapters", "reward_model_quantization_bit"):
            if config.get(key) is not None:
                out.append(f"{key} applies to reward_model_type: full only (the reward model is {kind}); remove it")
    return out


def training_problems(config, plan) -> list[str]:
    out = []
    method = plan.method.spec
    if (method.adapter is not None and method.adapter.disabled is None) or config.get("pissa_init"):
        out.append("pissa_init: PiSSA moves the principal weights into the adapter, so switching the adapter off no "
                   "longer gives the starting model that ppo uses as its KL reference; use finetuning_type lora")
    if not method.trains_added_modules:
        out.append(f"{method.label} picks the parameters it trains among the model's own and never trains the value "
                   "head ppo adds, which starts random: use finetuning_type lora, freeze or full (GaLore and APOLLO work)")
    evaluating = [k for k in ("do_eval", "val_size", "eval_dataset") if config.get(k)]
    strategy = config.get("eval_strategy")
    if strategy not in (None, "no"):
        evaluating.append(f"eval_strategy: {strategy}")
    if evaluating:
        out.append(f"{', '.join(evaluating)}: ppo does not evaluate (its reward is logged every step); evaluate the "
                   "trained model with the sft stage or `tuneforge eval`")
    if config.get("load_best_model_at_end"):
        out.append("load_best_model_at_end needs evaluation, which ppo does not run; remove it")
    if config.get("do_predict") or config.get("predict_with_generate"):
        out.append("do_predict / predict_with_generate: only sft predicts; predict with the trained model using stage "
                   "sft and do_predict")
    if config.get("packing") or config.get("neat_packing"):
        out.append("packing: ppo generates from one prompt per row; remove packing / neat_packing")
    if config.get("streaming"):
        out.append("streaming: ppo draws its prompts from a dataset of known size; remove streaming")
    if config.get("do_sample") is False:
        out.append("do_sample: false: ppo learns from replies sampled from the policy, and greedy replies are not "
                   "samples of it; remove do_sample (temperature: 1.0 and top_p: 1.0 sample the policy as it is)")
    if (config.get("num_beams") or 1) > 1:
        out.append("num_beams: ppo samples one reply per prompt from the policy itself; set num_beams: 1")
    return out


def setting_problems(config) -> list[str]:
    checks = [
        ("ppo_buffer_size", lambda v: v >= 1, "at least 1"),
        ("ppo_epochs", lambda v: v >= 1, "at least 1"),
        ("ppo_target", lambda v: v > 0, "positive"),
        ("ppo_kl_coef", lambda v: v >= 0, "0 or more"),
        ("ppo_gamma", lambda v: 0 <= v <= 1, "within [0, 1]"),
        ("ppo_lam", lambda v: 0 <= v <= 1, "within [0, 1]"),
        ("ppo_cliprange", lambda v: v > 0, "positive"),
        ("ppo_cliprange_value", lambda v: v > 0, "positive"),
        ("ppo_vf_coef", lambda v: v >= 0, "0 or more"),
        ("max_new_tokens", lambda v: v >= 1, "at least 1 (the length of a rollout's reply)"),
    ]
    return [f"{key} must be {rule}, not {config.get(key)}" for key, ok, rule in checks
            if config.get(key) is not None and not ok(config.get(key))]


def process_problems(config) -> list[str]:
    processes = world_size(config)
    out = []
    if processes > 1:
        out.append(f"ppo trains in one process ({processes} processes from WORLD_SIZE/NPROC_PER_NODE/ray_num_workers): run it without "
                   "torchrun / FORCE_TORCHRUN")
    for key in ("deepspeed", "fsdp"):
        if config.get(key):
            out.append(f"{key}: ppo trains in one process and does not shard the model; remove {key}")
    return out


def validate(config, plan) -> list[str]:
    return (reward_problems(config, plan) + training_problems(config, plan) + setting_problems(config)
            + process_problems(config))


def run(ctx):
    from tuneforge.data.dataset import build_datasets
    from tuneforge.errors import TuneforgeError
    from tuneforge.train.hf_trainer import build_trainer, train_and_save

    from ._ppo_rewards import build_scorer
    from ._ppo_trainer import PPOSettings, build_reference, generation_config, ppo_trainer_class
    from ._value_head import CausalLMWithValueHead

    data = build_datasets(ctx, "prompt")
    policy = CausalLMWithValueHead(ctx.model)
    lm = ctx.model
    ctx.model = policy  # build_trainer hands ctx.model to the trainer; the rest of the run sees the LM
    try:
        trainer = build_trainer(ctx, data, base=ppo_trainer_class())
    finally:
        ctx.model = lm
    if trainer.args.world_size > 1:
        raise TuneforgeError("ppo trains in one process; run it without torchrun")
    if ctx.config.adapter_name_or_path and hasattr(lm, "peft_config") and not ctx.config.get("create_new_adapter"):
        print("note: ppo's KL reference is the policy with its adapter switched off, i.e. the base model without "
              f"{ctx.config.adapter_name_or_path}; set create_new_adapter: true to merge it and use it as the reference")
    device = trainer.args.device
    trainer.ctx = ctx
    trainer.settings = PPOSettings.from_config(ctx.config)
    trainer.rollout_config = generation_config(ctx)
    trainer.reference = build_reference(ctx, device)
    trainer.scorer = build_scorer(ctx, lm, device)
    ctx.extras["policy"] = policy
    return train_and_save(ctx, trainer)


@hookimpl
def tuneforge_stages():
    return [StageSpec(
        name="ppo",
        description="PPO: the policy learns from a reward model or reward functions, with a KL penalty to its start.",
        keys=KEYS, run=run, validate=validate, data_kind="prompt", uses_rewards=True,
        unplanned="its generation and extra models",
    )]
