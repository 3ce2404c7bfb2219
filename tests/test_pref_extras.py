"""LLaMA-Factory's preference extras on the dpo stage, on the tiny model: ``ld_alpha`` (LD-DPO) weights
the verbose tail of the longer reply in the policy's log-probabilities, ``pref_bco_weight`` mixes BCO's
loss into DPO's; each equals plain DPO at its neutral value and differs as documented otherwise."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from tuneforge.errors import ConfigError
from tuneforge.plan import prepare
from tuneforge.plugin_manager import PluginManager
from tuneforge.plugins.stages.preference import RunningMean

from .test_stage_preference import a_batch, one_thread, settings, train, train_logs  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """A dpo run with both extras (2 steps), its trainer and a batch of 4 pairs to score."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("extras")
    ctx = train(tiny_model, out, max_steps=2, logging_steps=1, ld_alpha=0.5, pref_bco_weight=0.5)
    trainer = ctx.extras["trainer"]
    trainer.model.eval()
    return trainer, a_batch(trainer), out / "out"


def rows(batch):
    return batch["input_ids"], batch["attention_mask"], batch["labels"]


@pytest.fixture(scope="module")
def scored(trained):
    """The trained run's trainer and batch, the objective with both extras off, the batch's policy and
    reference log-probs, and its number of pairs."""
    trainer, batch, _ = trained
    with torch.no_grad():
        policy = trainer.policy_logps(trainer.model, *rows(batch))
        reference = trainer.reference_logps(trainer.model, *rows(batch))
    plain = dataclasses.replace(trainer.objective, ld_alpha=None, bco_weight=0.0)
    return trainer, batch, plain, policy, reference, batch["input_ids"].shape[0] // 2


def test_the_run_logs_the_bco_term(trained):
    trainer, _, out = trained
    logs = train_logs(out)
    assert len(logs) == 2 and all("bco_loss" in r and r["bco_loss"] > 0 for r in logs), logs
    assert trainer.objective.ld_alpha == 0.5 and trainer.objective.bco_weight == 0.5
    assert trainer.objective.bco_baseline.count == 2  # one update per training batch


def test_ld_alpha_weights_the_tail_of_the_longer_reply(scored):
    trainer, batch, plain, policy, reference, pairs = scored
    model = trainer.model
    with torch.no_grad():
        lengths = policy.tokens.tolist()
        assert any(lengths[i] != lengths[i + pairs] for i in range(pairs)), lengths  # the rule has something to do
        # LD-DPO by hand: the first min(len chosen, len rejected) labelled tokens count once, the rest alpha times.
        alpha = 0.3
        weighted = []
        for row in range(2 * pairs):
            shared = min(lengths[row % pairs], lengths[row % pairs + pairs])
            values = policy.token_logps[row][policy.mask[row]]
            weighted.append(values[:shared].sum() + alpha * values[shared:].sum())
        weighted = torch.stack(weighted)
        margin = (weighted[:pairs] - reference.total[:pairs]) - (weighted[pairs:] - reference.total[pairs:])
        expected = -F.logsigmoid(plain.beta * margin).mean()
        ld_loss, _ = dataclasses.replace(plain, ld_alpha=alpha)(trainer, model, batch)
        plain_loss, _ = plain(trainer, model, batch)
        neutral_loss, _ = dataclasses.replace(plain, ld_alpha=1.0)(trainer, model, batch)
    assert ld_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert neutral_loss.item() == pytest.approx(plain_loss.item(), rel=1e-6)
    assert abs(ld_loss.item() - plain_loss.item()) > 1e-4


def test_pref_bco_weight_mixes_bco_into_the_dpo_loss(scored):
    trainer, batch, plain, policy, reference, pairs = scored
    model = trainer.model
    with torch.no_grad():
        chosen = plain.beta * (policy.total[:pairs] - reference.total[:pairs])
        rejected = plain.beta * (policy.total[pairs:] - reference.total[pairs:])
        dpo = -F.logsigmoid(chosen - rejected)
        plain_loss, _ = plain(trainer, model, batch)
        assert plain_loss.item() == pytest.approx(dpo.mean().item(), rel=1e-5)
        weight = 0.5
        bco = dataclasses.replace(plain, bco_weight=weight, bco_baseline=RunningMean())  # a fresh running baseline
        first, metrics = bco(trainer, model, batch)
        delta = torch.cat((chosen, rejected)).mean()  # the running mean after one batch is that batch's
        term = -F.logsigmoid(chosen - delta) - F.logsigmoid(-(rejected - delta))
        assert first.item() == pytest.approx(((dpo + weight * term) / (1 + weight)).mean().item(), rel=1e-5)
        assert metrics["bco_loss"] == pytest.approx(term, rel=1e-5)
        assert abs(first.item() - plain_loss.item()) > 1e-4
        # The baseline is a running mean over batches: a second batch (the pairs swapped) moves it halfway.
        swapped = {k: torch.cat((v[pairs:], v[:pairs])) for k, v in batch.items()}
        bco(trainer, model, swapped)
        assert bco.bco_baseline.count == 2
        assert bco.bco_baseline.mean == pytest.approx(delta.item(), rel=1e-5)  # swapping keeps the mean reward
        neutral, _ = dataclasses.replace(plain, bco_weight=0.0)(trainer, model, batch)
    assert neutral.item() == plain_loss.item()


@pytest.mark.parametrize("overrides, needle", [
    ({"pref_bco_weight": -1}, "pref_bco_weight must be 0 or more, got -1"),
    ({"pref_bco_weight": 0.5, "pref_loss": "simpo"}, "pref_bco_weight: 0.5 needs a reference model's scores, which pref_loss: simpo"),
    ({"ld_alpha": -0.5}, "ld_alpha must be 0 or more, got -0.5"),
])
def test_check_refuses_extras_that_cannot_work(overrides, needle, tiny_model, tmp_path):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        prepare(None, settings(tiny_model, tmp_path, **overrides), manager=PluginManager(autoload=False))


def test_extras_on_another_stage_are_named_as_unused(tiny_model, tmp_path):
    prepared = prepare(None, settings(tiny_model, tmp_path, stage="sft", dataset="alpaca_en_demo", ld_alpha=0.5),
                       manager=PluginManager(autoload=False))
    assert any(w.startswith("ld_alpha (") and "stage 'dpo'" in w for w in prepared.warnings), prepared.warnings
