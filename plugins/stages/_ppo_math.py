"""The arithmetic of PPO on token sequences, as small functions over tensors.

Shapes: ``B`` rollouts (one reply per prompt), ``R`` reply positions. ``mask`` is 1 on the tokens a
reply really has (up to and including its stop token) and 0 on the padding after it. Every mean here
is over real reply tokens only.

References for the method (no code is taken from them): Schulman et al. 2017, "Proximal Policy
Optimization Algorithms" (clipped objective); Schulman et al. 2016, "High-Dimensional Continuous
Control Using Generalized Advantage Estimation" (GAE); Ziegler et al. 2019, "Fine-Tuning Language
Models from Human Preferences" (per-token KL penalty to a reference model, adaptive KL coefficient).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) at each position: ``logits`` [B, R, V] predicting ``tokens`` [B, R]."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The entropy of the predicted distribution at each position ([B, R])."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Scale to unit variance over the real tokens (and centre on 0 unless ``shift_mean`` is False).

    Padding positions come back as 0 so they add nothing downstream.
    """
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_penalized_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards [B, R]: ``-kl_coef * (log p - log p_ref)`` on every reply token, plus the
    sequence's score on its last real token.

    The KL term keeps the policy near the reference token by token; the score arrives only once the
    reply is complete, as a reward model or rule judges whole replies.
    """
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = last_real_index(mask)
    rewards[torch.arange(len(scores), device=rewards.device), last] += scores.to(rewards.dtype)
    return rewards


def last_real_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token ([B]); replies are never empty, so it is at least 0."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (mask.long() * positions).argmax(dim=1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimates and the returns the critic learns ([B, R] each).

    Padding after a reply has value 0 and reward 0, so a reply's last token bootstraps from 0: the
    episode ends there.
    """
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    returns = advantages + values
    return advantages * mask, returns * mask


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, cliprange: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's pessimistic surrogate: the worse of the plain and the clipped importance-weighted
    advantage, so one update cannot move a token's probability far from where the rollout sampled it.

    Returns (loss, the fraction of tokens where clipping was active).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    clip_fraction = masked_mean((clipped > unclipped).float(), mask)
    return loss, clip_fraction


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor, cliprange_value: float) -> torch.Tensor:
    """Half the squared error to the returns, taking the worse of the new value and the new value
    clipped to ``old ± cliprange_value`` (the critic's counterpart of the policy clipping)."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    errors = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * masked_mean(errors, mask)


class AdaptiveKLController:
    """The KL coefficient, nudged each step so the measured KL tracks ``target`` (Ziegler et al.):
    above the target the penalty grows, below it shrinks, by at most 20% of ``n / horizon`` per step.

    With ``target`` None the coefficient stays fixed.
    """

    def __init__(self, coef: float, target: float | None, horizon: int = 10000):
        self.coef = float(coef)
        self.target = target
        self.horizon = horizon

    def update(self, kl: float, n: int) -> None:
        if self.target is None:
            return
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.coef *= 1.0 + error * n / self.horizon

    def state_dict(self) -> dict:
        return {"coef": self.coef}

    def load_state_dict(self, state: dict) -> None:
        self.coef = float(state["coef"])


class RunningMoments:
    """Mean and standard deviation of every score seen so far (merged batch by batch), for
    ``ppo_score_norm``: scores on a stable scale whatever range the reward model outputs."""

    def __init__(self):
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count > 1 else 1.0

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().double().flatten()
        n = values.numel()
        if n == 0:
            return
        batch_mean = values.mean().item()
        batch_m2 = ((values - batch_mean) ** 2).sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta ** 2 * self.count * n / total
        self.count = total

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / (self.std + 1e-8)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])
