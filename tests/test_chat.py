"""`tuneforge chat` and the inference engines: the interactive loop for real, streaming, stop words,
adapters, and engine selection through the plugin kind ``engine``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tuneforge.chat.engine import GenerationSettings, StopText, cut_at_stop, engine_for
from tuneforge.errors import ConfigError
from tuneforge.plan import prepare

from .conftest import REPO

QUESTION = "Who are you?"


def chat_config(tmp_path, tiny_model, **extra) -> str:
    lines = {"model_name_or_path": str(tiny_model), "template": "llama3", "do_sample": "false", "max_new_tokens": "12", **extra}
    path = tmp_path / "chat.yaml"
    path.write_text("".join(f"{k}: {v}\n" for k, v in lines.items()))
    return str(path)


@pytest.fixture(scope="module")
def engine(tiny_model):
    from tuneforge.plugin_manager import PluginManager

    prepared = prepare(None, [f"model_name_or_path={tiny_model}", "template=llama3", "do_sample=false", "max_new_tokens=16"],
                       manager=PluginManager(autoload=False), inference=True)
    return engine_for(prepared)


def ask(engine, *turns: str, **settings):
    messages = []
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return engine.generate(messages, settings=engine.settings.updated(**settings) if settings else None)[0]


def test_interactive_chat_keeps_history_clear_resets_and_exit_quits(tmp_path, tiny_model):
    """A real terminal session: the same question three times, with `clear` before the third.

    Greedy decoding makes the replies a function of the prompt alone: the second answer differs from
    the first (the history is in the prompt), the third equals the first (clear emptied it), and
    nothing after `exit` is answered.
    """
    config = chat_config(tmp_path, tiny_model)
    stdin = f"{QUESTION}\n{QUESTION}\nclear\n{QUESTION}\nexit\n{QUESTION}\n"
    result = subprocess.run([sys.executable, "-m", "tuneforge.cli.main", "chat", config], input=stdin, capture_output=True,
                            text=True, timeout=300, cwd=REPO, env=os.environ)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "History has been removed." in out
    replies = [chunk.split("\n")[0] for chunk in out.split("Assistant: ")[1:]]
    assert len(replies) == 3, out
    assert replies[0] == replies[2], out
    assert replies[1] != replies[0], out
    assert replies[0].strip(), out


@pytest.mark.slow
def test_query_answers_once_with_an_adapter(tmp_path, tiny_model):
    """--query with adapter_name_or_path: a LoRA adapter (random, non-zero B) changes the answer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    plain = subprocess.run([sys.executable, "-m", "tuneforge.cli.main", "chat", chat_config(tmp_path, tiny_model), "--query", QUESTION],
                           capture_output=True, text=True, timeout=300, cwd=REPO)
    adapted = subprocess.run([sys.executable, "-m", "tuneforge.cli.main", "chat", chat_config(tmp_path, tiny_model),
                              f"adapter_name_or_path={tmp_path / 'adapter'}", "--query", QUESTION],
                             capture_output=True, text=True, timeout=300, cwd=REPO)
    assert plain.returncode == 0 and adapted.returncode == 0, adapted.stderr[-3000:]
    assert "User:" not in adapted.stdout  # no interactive loop
    assert f"loaded adapter {tmp_path / 'adapter'}" in adapted.stdout
    assert adapted.stdout.strip().splitlines()[-1] != plain.stdout.strip().splitlines()[-1]


def test_stream_gives_the_reply_piece_by_piece(engine):
    messages = [{"role": "user", "content": QUESTION}]
    whole = engine.generate(messages)[0]
    stream = engine.stream(messages)
    assert stream.response is None
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == whole.text
    assert stream.response.text == whole.text
    assert stream.response.prompt_tokens == len(engine.encode(messages))
    assert whole.finish_reason in ("stop", "length") and 0 < whole.completion_tokens <= 16


def test_stop_words_end_the_reply_before_them(engine):
    whole = ask(engine, QUESTION).text
    assert len(whole) > 8, whole
    stop = whole[4:7]
    expected = whole[: whole.index(stop)]
    cut = ask(engine, QUESTION, stop=[stop])
    assert cut.text == expected and cut.finish_reason == "stop"
    assert cut.completion_tokens < ask(engine, QUESTION).completion_tokens
    streamed = engine.stream([{"role": "user", "content": QUESTION}], settings=engine.settings.updated(stop=stop))
    assert "".join(streamed) == expected


def test_max_new_tokens_gives_finish_reason_length(engine):
    reply = ask(engine, QUESTION, max_new_tokens=3)
    assert reply.completion_tokens == 3 and reply.finish_reason == "length"


def test_generate_stops_at_the_next_token_once_cancel_is_set(engine):
    """The API server's cancellation: an event set before (or during) the generation ends it after
    the token under way; the engine also says how long a context its model takes."""
    import threading

    from tuneforge.chat.engine import accepts_cancel

    assert accepts_cancel(engine.generate) and engine.context_length == 2048
    messages = [{"role": "user", "content": QUESTION}]
    cancel = threading.Event()
    cancel.set()
    settings = engine.settings.updated(max_new_tokens=200)
    assert [r.completion_tokens for r in engine.generate(messages, settings=settings, n=2, cancel=cancel)] == [1, 1]
    assert engine.generate(messages, settings=settings, cancel=threading.Event())[0].completion_tokens == 200


def test_batches_are_left_padded_and_match_one_by_one_generation(engine):
    questions = ["Hi", QUESTION, "What is 5 plus 1? Please answer with a whole sentence."]
    prompts = [engine.encode([{"role": "user", "content": q}]) for q in questions]
    assert len({len(p) for p in prompts}) == 3
    batched = engine.generate_batch(prompts)
    assert [r.text for r in batched] == [ask(engine, q).text for q in questions]
    assert [r.prompt_tokens for r in batched] == [len(p) for p in prompts]


def test_stop_text_holds_back_what_may_start_a_stop_word():
    stopper = StopText(["<END>"])
    assert stopper.feed("Hello <") == "Hello "
    assert stopper.feed("E") == ""
    assert stopper.feed("x") == "<Ex"
    assert stopper.feed(" bye <EN") == " bye "
    assert stopper.feed("D> ignored") == "" and stopper.stopped
    assert stopper.feed("more") == "" and stopper.flush() == ""
    assert StopText(["##"]).feed("a#") == "a"
    assert cut_at_stop("abc STOP def", ["STOP", "c S"]) == ("ab", True)


def test_generation_settings_follow_the_config_and_requests():
    settings = GenerationSettings(temperature=0.5, max_new_tokens=20)
    assert settings.updated(temperature=None, max_new_tokens=5).max_new_tokens == 5
    assert settings.updated(temperature=None).temperature == 0.5
    greedy = settings.updated(temperature=0)
    assert greedy.do_sample is False
    assert settings.updated(stop="x").stop == ("x",)


def test_engines_are_plugins_selected_by_infer_backend(tiny_model, manager):
    rows = {e.name: e for e in manager.entries("engine")}
    assert rows["huggingface"].status == "active"
    for name, package in (("vllm", "vllm"), ("sglang", "sglang")):
        if rows[name].status == "active":
            continue  # a CUDA machine with the library installed
        assert rows[name].status.startswith("unavailable: "), rows[name].status
        assert package in rows[name].status or "CUDA" in rows[name].status
    base = [f"model_name_or_path={tiny_model}", "template=llama3"]
    plan = prepare(None, base, manager=manager, inference=True).plan
    assert plan.engine.name == "huggingface" and ("engine", "huggingface", plan.engine.provider) in plan.describe()
    assert prepare(None, base, manager=manager).plan.engine is None  # training plans no engine
    with pytest.raises(ConfigError) as info:
        prepare(None, [*base, "infer_backend=vllm"], manager=manager, inference=True)
    assert "infer_backend" in str(info.value) and "vllm" in str(info.value)
    if rows["vllm"].status != "active":
        assert "unavailable" in str(info.value)
    with pytest.raises(ConfigError, match="did you mean 'huggingface'"):
        prepare(None, [*base, "infer_backend=hugingface"], manager=manager, inference=True)


def test_a_third_party_engine_plugin_is_used(tiny_model):
    """An engine from another package: `create(ctx)` gets the planned context and serves chat."""
    from tuneforge import InferenceEngineSpec, hookimpl
    from tuneforge.chat.engine import FinishedStream, Response
    from tuneforge.plugin_manager import PluginManager
    from tuneforge.train.model import load_tokenizer

    class EchoEngine:
        name = "echo"

        def __init__(self, ctx):
            load_tokenizer(ctx)
            self.ctx, self.tokenizer, self.template = ctx, ctx.tokenizer, ctx.template
            self.settings = GenerationSettings.from_config(ctx.config)

        def encode(self, messages, system=None, tools=None):
            return self.template.encode_prompt(self.tokenizer, messages, system, tools)

        def generate(self, messages, system=None, tools=None, settings=None, n=1):
            return [Response(messages[-1]["content"].upper(), len(self.encode(messages)), 1, "stop")] * n

        def stream(self, messages, system=None, tools=None, settings=None):
            return FinishedStream(self.generate(messages)[0])

        def generate_batch(self, prompts, settings=None):
            return [Response(str(len(p)), len(p), 1, "stop") for p in prompts]

    class Plugin:
        @hookimpl
        def tuneforge_inference_engines(self):
            return [InferenceEngineSpec(name="echo", description="echoes", create=EchoEngine)]

    manager = PluginManager(autoload=False, extra_plugins=[("echo", Plugin())])
    prepared = prepare(None, [f"model_name_or_path={tiny_model}", "template=llama3", "infer_backend=echo"], manager=manager, inference=True)
    engine = engine_for(prepared)
    assert isinstance(engine, EchoEngine) and engine.settings.max_new_tokens == 1024
    assert "".join(engine.stream([{"role": "user", "content": "hi"}])) == "HI"
