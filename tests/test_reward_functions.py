"""Reward functions: the plugin kind, the built-ins' scores, and a third-party reward-function package
(tests/plugin_packages/tuneforge-rewardfn) installed with pip and found through its entry point."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tuneforge.errors import ConfigError
from tuneforge.plan import prepare

from .test_stage_grpo import write_config
from .test_third_party_plugins import _rows, cli

BUILTINS = ("accuracy", "contains", "length", "think_format")


def score(manager, name: str, completions: list[str], prompts=None, config=None, tokenizer=None, **columns):
    ctx = SimpleNamespace(config=SimpleNamespace(**(config or {})), tokenizer=tokenizer)
    prompts = prompts or [""] * len(completions)
    return manager.reward(name).score(ctx, prompts, completions, **columns)


# --- the built-ins ----------------------------------------------------------------------------------


def test_builtins_are_registered_as_reward_functions(manager):
    assert set(BUILTINS) <= set(manager.names("reward"))
    for name in BUILTINS:
        entry = manager.entry("reward", name)
        assert entry.status == "active" and entry.record.builtin and entry.kind == "reward"


def test_contains(manager):
    scores = score(manager, "contains", ["I am Allen.", "allen", "", "Allen Allen"], config={"reward_contains_text": "Allen"})
    assert scores == [1.0, 0.0, 0.0, 1.0]


def test_length_peaks_at_the_target_in_tokens(manager, tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in ("a b c d", "a", "")]
    target = lengths[0]
    scores = score(manager, "length", ["a b c d", "a", "", "a b c d " * 3], config={"reward_target_length": target},
                   tokenizer=tokenizer)
    assert scores[0] == 1.0
    assert scores[1] == pytest.approx(lengths[1] / target)
    assert scores[2] == 0.0
    assert scores[3] == 0.0  # three times the target: past twice the target scores nothing


def test_think_format(manager):
    completions = [
        "<think>2 and 2 make 4</think>\nThe answer is 4.",  # a block, then an answer
        "  <think>\nhm\n</think> 4",  # leading space and line breaks are fine
        "<think>no answer follows</think>",  # nothing after the block
        "The answer is 4.",  # no block
        "4 <think>late</think> 4",  # the block must come first
        "<think>a</think> 4 <think>again</think>",  # a second block
        "<think><think>nested</think></think> 4",  # nested tags
    ]
    assert score(manager, "think_format", completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    # A template whose prompt already opens the block: the completion starts inside it.
    assert score(manager, "think_format", ["2 and 2</think> 4"], prompts=["<|assistant|><think>\n"]) == [1.0]


def test_accuracy_compares_final_answers(manager):
    completions = [
        "<think>3 + 4 = 7</think> The answer is 7.",  # answer line after the think block
        "So the total is \\boxed{1,000}",  # last \boxed{}, thousands separator
        "Answer: 3.50",  # numbers compare by value
        "Answer: PARIS",  # case
        "The answer is 8.",  # wrong
        "7",  # the reference has no reply: nothing to compare
    ]
    references = ["7", "#### 1000", "3.5", "Paris.", "7", ""]
    assert score(manager, "accuracy", completions, reference=references) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    # Columns a function does not know are accepted and ignored, so stages can pass more.
    assert score(manager, "accuracy", ["7"], reference=["7"], difficulty=["easy"]) == [1.0]


def test_reward_keys_are_validated_when_selected(tmp_path, manager):
    with pytest.raises(ConfigError) as info:
        prepare(write_config(tmp_path, reward_funcs="contains,length", reward_target_length=0), manager=manager)
    message = str(info.value)
    assert "reward contains: reward_contains_text is not set" in message
    assert "reward length: reward_target_length must be a positive number of tokens, not 0" in message
    prepared = prepare(write_config(tmp_path, reward_funcs=["contains", "length"], reward_contains_text="Allen"),
                       manager=manager)
    assert [r.name for r in prepared.plan.rewards] == ["contains", "length"]
    assert ("reward", "contains", "tuneforge 0.1.0 (built-in)") in prepared.plan.describe()
    assert not prepared.warnings


def test_reward_keys_of_unselected_functions_warn(tmp_path, manager):
    prepared = prepare(write_config(tmp_path, reward_contains_text="Allen"), manager=manager)
    assert any(w.startswith("reward_contains_text") and "belongs to reward 'contains', which this run does not use" in w
               for w in prepared.warnings)


# --- the CLI ------------------------------------------------------------------------------------------


def test_plugins_lists_the_builtin_reward_functions():
    result = cli("plugins", "--kind", "reward")
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    for name in BUILTINS:
        assert rows[name] == [name, "reward", "0.1.0", "tuneforge", "active"], rows.get(name)


def test_unknown_reward_function_fails_check_with_did_you_mean(tmp_path):
    result = cli("check", str(write_config(tmp_path, reward_funcs="think_format,acuracy")))
    assert result.returncode == 2
    assert "reward_funcs: unknown reward_funcs 'acuracy'; did you mean 'accuracy'?" in result.stderr
    assert "available: accuracy, contains, length, think_format" in result.stderr


# --- a third-party reward-function package ------------------------------------------------------------


def test_third_party_reward_function_is_listed_with_its_provider(rewardfn_site, tmp_path):
    result = cli("plugins", "--kind", "reward", plugins=[rewardfn_site])
    assert result.returncode == 0, result.stderr
    rows = _rows(result.stdout)
    assert rows["char_share"] == ["char_share", "reward", "0.2.0", "tuneforge-rewardfn", "active"]
    assert rows["accuracy"][3] == "tuneforge"

    result = cli("show", "reward", "char_share", plugins=[rewardfn_site])
    assert result.returncode == 0, result.stderr
    assert "reward 'char_share' from tuneforge-rewardfn 0.2.0 (entry point 'rewardfn')" in result.stdout
    assert "char_share_characters: str = '0123456789'" in result.stdout

    cfg = write_config(tmp_path, reward_funcs="char_share,think_format", char_share_characters="7")
    result = cli("check", str(cfg), plugins=[rewardfn_site])
    assert result.returncode == 0, result.stderr
    assert "reward     char_share  [tuneforge-rewardfn 0.2.0 (entry point 'rewardfn')]" in result.stdout
    assert "reward     think_format  [tuneforge 0.1.0 (built-in)]" in result.stdout

    # Its own validation runs in check; without the package the name and its key are unknown.
    result = cli("check", str(cfg), "char_share_characters= ", plugins=[rewardfn_site])
    assert result.returncode == 2 and "reward char_share: char_share_characters must name at least one character" in result.stderr
    result = cli("check", str(cfg))
    assert result.returncode == 2
    assert "char_share_characters: unknown key" in result.stderr and "unknown reward_funcs 'char_share'" in result.stderr


def test_writing_plugins_shows_the_tested_reward_function_module():
    from .conftest import PLUGIN_PACKAGES, REPO
    from .test_docs import _one_block

    text = (REPO / "docs" / "writing-plugins.md").read_text(encoding="utf-8")
    module = _one_block(text, "python", "def tuneforge_reward_functions():", 'name="char_share"')
    package = PLUGIN_PACKAGES / "tuneforge-rewardfn" / "tuneforge_rewardfn.py"
    assert module.strip() == package.read_text(encoding="utf-8").strip()
