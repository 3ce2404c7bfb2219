"""`tuneforge api` driven with the official openai client, against real servers on 127.0.0.1.

Two `tuneforge api` processes serve the tiny model (one with API_KEY, one without); an in-process
uvicorn server with a scripted engine covers what a random model cannot show on demand: tool calls
in the template's format, the bound on concurrent generations, and a slot freed by a client that
goes away. Every request has a timeout and every server is stopped at the end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

openai = pytest.importorskip("openai")
try:  # the HTTP client the openai package itself uses
    import httpx2 as httpx
except ImportError:
    httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("sse_starlette")

from tuneforge.chat.engine import GenerationSettings, Response, StopText  # noqa: E402
from tuneforge.chat.tools import from_openai, parse_tool_calls  # noqa: E402

from .conftest import REPO  # noqa: E402

KEY = "sk-tuneforge-test"
TIMEOUT = 120
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen | None = None, deadline: float = 180) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {process.stdout.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"no server at {url} after {deadline} s")


@contextmanager
def api_process(config: str, **env: str):
    port = free_port()
    full_env = {**os.environ, "API_PORT": str(port), "API_LOG_LEVEL": "warning", **env}
    full_env.pop("API_HOST", None)
    if "API_KEY" not in env:
        full_env.pop("API_KEY", None)
    process = subprocess.Popen([sys.executable, "-m", "tuneforge.cli.main", "api", config], cwd=REPO, env=full_env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@pytest.fixture(scope="module")
def servers(tiny_model, tmp_path_factory):
    """Both real servers, started side by side (their start-up overlaps)."""
    folder = tmp_path_factory.mktemp("api")
    config = folder / "api.yaml"
    config.write_text(f"model_name_or_path: {tiny_model}\ntemplate: llama3\ndo_sample: false\nmax_new_tokens: 16\n")
    with api_process(str(config), API_KEY=KEY, API_MODEL_NAME="tiny-test") as (keyed, keyed_url), \
            api_process(str(config)) as (open_, open_url):
        wait_ready(keyed_url, keyed)
        wait_ready(open_url, open_)
        yield {"keyed": keyed_url, "open": open_url, "keyed_process": keyed}


def client(url: str, key: str | None = KEY):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key or "unused", max_retries=0, timeout=TIMEOUT)


def test_server_binds_loopback_and_lists_the_model(servers):
    models = client(servers["keyed"]).models.list()
    assert [m.id for m in models.data] == ["tiny-test"]
    assert servers["keyed"].startswith("http://127.0.0.1:")


def test_chat_completion_not_streamed(servers):
    reply = client(servers["keyed"]).chat.completions.create(
        model="tiny-test", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"}])
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 16 and reply.usage.prompt_tokens > 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_completion_streamed_matches_the_whole_reply(servers):
    api = client(servers["keyed"])
    messages = [{"role": "user", "content": "Who are you?"}]
    whole = api.chat.completions.create(model="tiny-test", messages=messages).choices[0].message.content
    chunks = list(api.chat.completions.create(model="tiny-test", messages=messages, stream=True,
                                              stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1 and "".join(deltas) == whole
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_stop_words_and_generation_parameters(servers):
    api = client(servers["keyed"])
    messages = [{"role": "user", "content": "Who are you?"}]
    whole = api.chat.completions.create(model="tiny-test", messages=messages).choices[0].message.content
    stop = whole[4:7]
    cut = api.chat.completions.create(model="tiny-test", messages=messages, stop=[stop])
    assert cut.choices[0].message.content == whole[: whole.index(stop)]
    short = api.chat.completions.create(model="tiny-test", messages=messages, max_tokens=2)
    assert short.usage.completion_tokens == 2 and short.choices[0].finish_reason == "length"
    sampled = api.chat.completions.create(model="tiny-test", messages=messages, temperature=1.0, n=3, extra_body={"do_sample": True})
    assert len(sampled.choices) == 3 and len({c.message.content for c in sampled.choices}) > 1
    greedy = api.chat.completions.create(model="tiny-test", messages=messages, n=2)
    assert [c.message.content for c in greedy.choices] == [whole, whole]


def test_api_key_is_required_when_set(servers):
    bad = client(servers["keyed"], "wrong-key")
    for call in (lambda: bad.chat.completions.create(model="tiny-test", messages=[{"role": "user", "content": "hi"}]),
                 lambda: bad.chat.completions.create(model="tiny-test", messages=[{"role": "user", "content": "hi"}], stream=True),
                 bad.models.list):
        with pytest.raises(openai.AuthenticationError) as info:
            call()
        assert info.value.status_code == 401 and "API_KEY" in str(info.value)
    # no Authorization header at all (the openai client always sends one)
    for raw in (httpx.get(f"{servers['keyed']}/v1/models", timeout=TIMEOUT),
                httpx.post(f"{servers['keyed']}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=TIMEOUT)):
        assert raw.status_code == 401 and raw.headers["www-authenticate"] == "Bearer"
        assert raw.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{servers['keyed']}/health", timeout=TIMEOUT).status_code == 200  # liveness needs no key


def test_without_api_key_the_server_is_open(servers):
    api = client(servers["open"], "any-key-at-all")
    assert api.models.list().data[0].id == "llama3-tiny-v1"  # API_MODEL_NAME unset: the model folder's name
    reply = api.chat.completions.create(model="x", messages=[{"role": "user", "content": "Who are you?"}])
    assert reply.choices[0].message.content
    stream = api.chat.completions.create(model="x", messages=[{"role": "user", "content": "Who are you?"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == reply.choices[0].message.content
    assert httpx.get(f"{servers['open']}/v1/models", timeout=TIMEOUT).json()["data"][0]["id"] == "llama3-tiny-v1"


@pytest.mark.parametrize("body, param, words", [
    ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages[0].role", "expected a user"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role", "Input should be"),
    ({"messages": []}, "messages", "at least 1"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature", "less than or equal to 2"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": True, "n": 2}, "n", "cannot be streamed"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]", "text-only"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}, "messages[1].role", "alternate"),
])
def test_malformed_requests_get_422_naming_the_field(servers, body, param, words):
    response = httpx.post(f"{servers['keyed']}/v1/chat/completions", json={"model": "x", **body},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_invalid_json_and_unknown_routes(servers):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    response = httpx.post(f"{servers['keyed']}/v1/chat/completions", content=b'{"messages": [', headers=headers, timeout=TIMEOUT)
    assert response.status_code == 422 and "not valid JSON" in response.json()["error"]["message"]
    assert httpx.get(f"{servers['keyed']}/v1/nothing", headers=headers, timeout=TIMEOUT).status_code == 404
    with pytest.raises(openai.UnprocessableEntityError):
        client(servers["keyed"]).chat.completions.create(model="x", messages=[{"role": "assistant", "content": "hi"}])


# ---------------------------------------------------------------- a scripted engine in a real server


class ScriptedEngine:
    """Replies chosen by the last user message; a reply can wait on ``gate`` (to hold a slot)."""

    name = "scripted"

    def __init__(self, template, tokenizer, replies: dict[str, str]):
        self.template, self.tokenizer, self.replies = template, tokenizer, replies
        self.settings = GenerationSettings(max_new_tokens=64)
        self.gate = threading.Event()
        self.gate.set()
        self.prompts: list[str] = []
        self.cancelled = threading.Event()

    def encode(self, messages, system=None, tools=None):
        return self.template.encode_prompt(self.tokenizer, messages, system, tools)

    def _reply(self, messages, system, tools):
        self.prompts.append(self.tokenizer.decode(self.encode(messages, system, tools)))
        return self.replies.get(messages[-1]["content"], "plain words here")

    def generate(self, messages, system=None, tools=None, settings=None, n=1):
        text = self._reply(messages, system, tools)
        return [Response(text, 3, 5, "stop")] * n

    def stream(self, messages, system=None, tools=None, settings=None):
        engine, text = self, self._reply(messages, system, tools)

        class Stream:
            def __init__(self):
                self.response = None
                self._pieces = self._run()

            def _run(self):
                stopper = StopText((settings or engine.settings).stop)
                for word in text.split(" "):
                    while not engine.gate.wait(0.05):
                        if engine.cancelled.is_set():
                            return
                    out = stopper.feed(word + " ")
                    if out:
                        yield out
                self.response = Response(text, 3, 5, "stop")

            def __iter__(self):
                return self

            def __next__(self):
                return next(self._pieces)

            def cancel(self):
                if self.response is None:
                    engine.cancelled.set()

        return Stream()

    def generate_batch(self, prompts, settings=None):
        raise NotImplementedError


@contextmanager
def scripted_server(engine, **limits):
    import uvicorn

    from tuneforge.plugins.apps.api.app import create_app

    port = free_port()
    app = create_app(engine, model_name="scripted", **limits)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_ready(f"http://127.0.0.1:{port}", deadline=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        engine.gate.set()
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def qwen(tiny_model):
    from transformers import AutoTokenizer

    from tuneforge.data.template import Template
    from tuneforge.plugin_manager import PluginManager

    manager = PluginManager(autoload=False)
    return Template.from_definition("qwen", manager.template("qwen").definition), AutoTokenizer.from_pretrained(tiny_model)


TOOL_REPLY = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_tool_calls_come_back_in_the_openai_format(qwen):
    template, tokenizer = qwen
    engine = ScriptedEngine(template, tokenizer, {"Weather in Paris?": TOOL_REPLY})
    with scripted_server(engine) as url:
        api = client(url, None)
        reply = api.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "Weather in Paris?"}],
                                            tools=[WEATHER_TOOL])
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
        assert json.loads(call.function.arguments) == {"city": "Paris"}
        assert "<tools>" in engine.prompts[-1] and '"get_weather"' in engine.prompts[-1]  # offered through the template

        chunks = list(api.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "Weather in Paris?"}],
                                                  tools=[WEATHER_TOOL], stream=True))
        calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert [(tc.index, tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [(0, "get_weather", {"city": "Paris"})]
        assert not any(c.choices[0].delta.content for c in chunks if c.choices)
        assert chunks[-1].choices[0].finish_reason == "tool_calls"

        # a plain answer with tools offered still streams as it comes
        chunks = list(api.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "Hello"}],
                                                  tools=[WEATHER_TOOL], stream=True))
        texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
        assert len(texts) > 1 and "".join(texts).strip() == "plain words here"

        # the tool result goes back through the template's observation slot
        reply = api.chat.completions.create(model="scripted", tools=[WEATHER_TOOL], messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
                                                                   "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
        ])
        assert reply.choices[0].message.content == "plain words here" and reply.choices[0].finish_reason == "stop"
        prompt = engine.prompts[-1]
        assert TOOL_REPLY in prompt and '<tool_response>\n{"temperature": 21}\n</tool_response>' in prompt


def test_concurrent_generations_are_bounded_and_a_gone_client_frees_its_slot(qwen):
    template, tokenizer = qwen
    engine = ScriptedEngine(template, tokenizer, {})
    with scripted_server(engine, max_concurrent=1, max_queue=0) as url:
        api = client(url, None)
        engine.gate.clear()  # the first reply waits: it holds the only slot
        holder = api.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "first"}], stream=True)
        first = next(iter(holder))
        assert first.choices[0].delta.role == "assistant"
        with pytest.raises(openai.RateLimitError) as info:
            api.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "second"}])
        assert info.value.status_code == 429 and "MAX_CONCURRENT=1" in str(info.value)
        assert info.value.response.headers["retry-after"] == "1"
        holder.close()  # the client goes away mid-reply
        assert engine.cancelled.wait(10), "the generation of a gone client was not cancelled"
        deadline = time.monotonic() + 10
        while True:
            try:
                engine.gate.set()
                reply = api.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "third"}])
                break
            except openai.RateLimitError:
                assert time.monotonic() < deadline, "the slot of the gone client was never freed"
                time.sleep(0.1)
        assert reply.choices[0].message.content == "plain words here"


def test_a_waiting_request_is_served_when_the_slot_frees(qwen):
    template, tokenizer = qwen
    engine = ScriptedEngine(template, tokenizer, {})
    with scripted_server(engine, max_concurrent=1, max_queue=2) as url:
        api = client(url, None)
        engine.gate.clear()
        holder = api.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "first"}], stream=True)
        next(iter(holder))
        result = {}
        waiter = threading.Thread(target=lambda: result.setdefault("reply", api.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "second"}])))
        waiter.start()
        time.sleep(0.5)
        assert "reply" not in result  # queued, not refused
        engine.gate.set()
        assert "".join(c.choices[0].delta.content or "" for c in holder if c.choices).strip() == "plain words here"
        waiter.join(timeout=30)
        assert result["reply"].choices[0].message.content == "plain words here"


# ---------------------------------------------------------------- tool formats of every template


CALLS = [{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2], "nested": {"brace": "}"}}},
         {"name": "add", "arguments": {"a": 1, "b": 2}}]


def _templates():
    from tuneforge.data.template import Template
    from tuneforge.plugin_manager import PluginManager

    manager = PluginManager(autoload=False)
    # every template built from a definition (not auto, which needs a tokenizer; not the multimodal names)
    return [Template.from_definition(e.name, e.spec.definition) for e in manager.entries("template")
            if e.status == "active" and e.spec.build is None]


@pytest.mark.parametrize("template", _templates(), ids=lambda t: t.name)
def test_every_template_parses_its_own_tool_calls(template, qwen):
    """A function turn as the template writes it (what a model trained on it generates, up to its
    stop token) parses back to the same calls, with or without the function slot's special marker."""
    tokenizer = qwen[1]
    slot = template.format_function or template.format_assistant
    head = slot.split("{{content}}")[0].replace("{{bos_token}}", "").replace("{{eos_token}}", "")
    for calls in (CALLS[:1], CALLS):
        if len(calls) > 1 and not template.parallel_tool_calls:
            continue
        text = template.render_tool_calls(json.dumps(calls))
        for generated in (head + text, text):
            parsed = parse_tool_calls(template, generated, tokenizer)
            assert parsed is not None and parsed[1] == calls, (template.name, generated)
    assert parse_tool_calls(template, "The weather in Paris is sunny.", tokenizer) is None


def test_openai_messages_convert_to_template_turns():
    messages, system = from_openai([
        {"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": '{"x": 1}'}},
                                             {"function": {"name": "g", "arguments": "{}"}}]},
        {"role": "tool", "content": "r1"}, {"role": "tool", "content": "r2"},
    ])
    assert system == "S"
    assert messages == [
        {"role": "user", "content": "ab"},
        {"role": "function", "content": json.dumps([{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {}}])},
        {"role": "observation", "content": json.dumps(["r1", "r2"])},
    ]
