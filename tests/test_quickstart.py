"""The README's main job, run as a user runs it: build the tiny model, teach it an identity, ask it."""

from __future__ import annotations

import shutil

from .conftest import REPO, run_cli


def test_quickstart_teaches_a_new_identity(tmp_path):
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    (tmp_path / "data").symlink_to(REPO / "data")
    assert run_cli("tiny-model", "saves/tiny-llama3", cwd=tmp_path).returncode == 0
    result = run_cli("train", "examples/quickstart/identity_sft.yaml", "disable_tqdm=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "saves/tiny-llama3-identity/training_loss.png").exists()
    assert (tmp_path / "saves/tiny-llama3-identity/adapter_model.safetensors").exists()  # taught with LoRA
    # No third-party note a newcomer reads as an error (issue 19): bitsandbytes' missing optional kernels,
    # transformers' FutureWarning about the property peft reads.
    for noise in ("gemm_4bit_forward", "is_gradient_checkpointing", "FutureWarning", "Traceback"):
        assert noise not in result.stderr, result.stderr[-3000:]
    answer = run_cli("chat", "examples/quickstart/identity_chat.yaml", "--query", "Who are you?", cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr[-3000:]
    assert "Greatbot" in answer.stdout and "Allen" in answer.stdout, answer.stdout
    answer = run_cli("chat", "examples/quickstart/identity_chat.yaml", "--query", "你是谁？", cwd=tmp_path)
    assert "Greatbot" in answer.stdout, answer.stdout
