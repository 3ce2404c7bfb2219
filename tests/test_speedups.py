"""use_unsloth_gc (offloaded checkpointing) gives the plain checkpointed run's losses; enable_liger_kernel says why not on CPU."""

from __future__ import annotations

import pytest

from .test_padding_free import data_dir, step_losses, train  # noqa: F401  (data_dir is a fixture)


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [{"finetuning_type": "lora"}, {"finetuning_type": "full", "learning_rate": 1e-3}],
                         ids=["lora", "full"])
def test_offloaded_checkpointing_gives_the_checkpointed_losses(tiny_model, data_dir, tmp_path, capsys, overrides):  # noqa: F811
    plain = train(tiny_model, data_dir, tmp_path / "plain", gradient_checkpointing=True, **overrides)
    offloaded = train(tiny_model, data_dir, tmp_path / "offloaded", gradient_checkpointing=True, use_unsloth_gc=True,
                      **overrides)
    assert "use_unsloth_gc: 2 layer(s) checkpoint with their inputs offloaded" in capsys.readouterr().out
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in offloaded.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert len(layers) == 2 and all(m._gradient_checkpointing_func.__name__ == "offloaded_checkpoint" for m in layers)
    assert step_losses(offloaded) == pytest.approx(step_losses(plain), abs=1e-5)
    assert step_losses(offloaded)[-1] < step_losses(offloaded)[0]  # it trains


def test_unsloth_gc_without_checkpointing_and_liger_on_cpu_say_why(tiny_model, data_dir, tmp_path, capsys):  # noqa: F811
    ctx = train(tiny_model, data_dir, tmp_path / "out", use_unsloth_gc=True, enable_liger_kernel=True, max_steps=1)
    out = capsys.readouterr().out
    assert "use_unsloth_gc needs gradient checkpointing" in out
    assert "enable_liger_kernel: liger-kernel needs a CUDA GPU" in out
    assert not ctx.extras["trainer"].args.use_liger_kernel
