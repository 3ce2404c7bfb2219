"""`tuneforge api` driven with the official openai client, against real servers on 127.0.0.1.

Two `tuneforge api` processes serve the tiny model (one with API_KEY, a prompt-token bound and a
short time limit; one without a key, with a small body limit and a queue deep enough for the load
test); an in-process uvicorn server with a scripted engine covers what a random model cannot show
on demand: tool calls in the template's format, the bound on concurrent generations, and slots and
places in the line freed by clients that go away. Cancellation is observed from outside, as an
operator would: ``/health``'s ``running`` count (a slot is freed only once its generation ended)
and the server's CPU time. Every request has a timeout and every server is stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

openai = pytest.importorskip("openai")
try:  # the HTTP client the openai package itself uses
    import httpx2 as httpx
except ImportError:
    httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from tuneforge.chat.engine import GenerationSettings, Response, StopText  # noqa: E402
from tuneforge.chat.tools import from_openai, parse_tool_calls  # noqa: E402

from .conftest import REPO, run_cli  # noqa: E402

KEY = "sk-tuneforge-test"
TIMEOUT = 120
# the limits of the two module servers (the tiny model's context is 2048 tokens)
# KEYED_TIMEOUT: a 2000-token reply of the tiny model takes about 3.3 s on an idle 2-core machine; the
# other requests to that server take well under a second
KEYED_MAX_PROMPT, KEYED_TIMEOUT, OPEN_MAX_BODY = 1500, 1, 1_000_000
CONTEXT = 2048
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
    with api_process(str(config), API_KEY=KEY, API_MODEL_NAME="tiny-test", MAX_CONCURRENT="2",
                     API_MAX_PROMPT_TOKENS=str(KEYED_MAX_PROMPT), API_REQUEST_TIMEOUT=str(KEYED_TIMEOUT)) as (keyed, keyed_url), \
            api_process(str(config), MAX_CONCURRENT="2", API_MAX_QUEUE="100", API_MAX_BODY_BYTES=str(OPEN_MAX_BODY)) as (open_, open_url):
        wait_ready(keyed_url, keyed)
        wait_ready(open_url, open_)
        yield {"keyed": keyed_url, "open": open_url, "keyed_process": keyed, "open_process": open_}


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
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "Input should be"),
    ({"messages": []}, "messages", "at least 1"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 5}, "temperature", "less than or equal to 2"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": True, "n": 2}, "n", "cannot be streamed"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content[0]", "text-only"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}, "messages[1].role", "alternate"),
])
def test_malformed_requests_get_400_naming_the_field(servers, body, param, words):
    response = httpx.post(f"{servers['keyed']}/v1/chat/completions", json={"model": "x", **body},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_invalid_json_and_unknown_routes(servers):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    response = httpx.post(f"{servers['keyed']}/v1/chat/completions", content=b'{"messages": [', headers=headers, timeout=TIMEOUT)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    assert httpx.get(f"{servers['keyed']}/v1/nothing", headers=headers, timeout=TIMEOUT).status_code == 404
    with pytest.raises(openai.BadRequestError):
        client(servers["keyed"]).chat.completions.create(model="x", messages=[{"role": "assistant", "content": "hi"}])


# ---------------------------------------------------------------- limits, cancellation, strict types


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=TIMEOUT).json()


def wait_for(predicate, deadline: float, what: str) -> float:
    """Poll until ``predicate()``; the seconds it took."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < deadline, f"{what}: not within {deadline} s"
        time.sleep(0.05)
    return time.monotonic() - start


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


LONG = "hello world "  # about 7 tokens of the tiny tokenizer a time


def test_a_body_over_the_limit_is_413_naming_the_limit(servers):
    url = servers["open"]
    big = {"model": "x", "messages": user("a" * (OPEN_MAX_BODY + 10))}
    response = httpx.post(f"{url}/v1/chat/completions", json=big, timeout=TIMEOUT)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert f"API_MAX_BODY_BYTES={OPEN_MAX_BODY}" in error["message"] and error["code"] == "request_too_large"

    def chunked():  # no Content-Length: counted as it arrives
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(12):
            yield b"a" * 100_000
        yield b'"}]}'

    response = httpx.post(f"{url}/v1/chat/completions", content=chunked(), headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    assert response.status_code == 413 and f"at most {OPEN_MAX_BODY} bytes" in response.json()["error"]["message"]
    with pytest.raises(openai.APIStatusError) as info:
        client(url, None).chat.completions.create(model="x", messages=big["messages"])
    assert info.value.status_code == 413
    assert client(url, None).chat.completions.create(model="x", messages=user("Hi"), max_tokens=2).choices[0].message.content


def test_a_prompt_longer_than_the_context_is_400(servers):
    api = client(servers["open"], None)
    # far too long: refused from its length in characters, before any tokenising
    with pytest.raises(openai.BadRequestError) as info:
        api.chat.completions.create(model="x", messages=user(LONG * 20_000))
    error = info.value
    assert error.code == "context_length_exceeded" and error.param == "messages"
    assert "240000 characters" in error.message and f"context is {CONTEXT} tokens" in error.message
    # under that bound but still too long: refused from its tokens
    with pytest.raises(openai.BadRequestError) as info:
        api.chat.completions.create(model="x", messages=user(LONG * 450), stream=True)
    assert info.value.code == "context_length_exceeded" and re.search(r"the prompt is \d{4} tokens", info.value.message)
    assert f"at most {CONTEXT - 1} tokens" in info.value.message


def test_api_max_prompt_tokens_bounds_the_prompt(servers):
    api = client(servers["keyed"])
    with pytest.raises(openai.BadRequestError) as info:
        api.chat.completions.create(model="x", messages=user(LONG * 230))
    assert f"API_MAX_PROMPT_TOKENS={KEYED_MAX_PROMPT}" in info.value.message and info.value.code == "context_length_exceeded"
    reply = api.chat.completions.create(model="x", messages=user(LONG * 180), max_tokens=2)
    assert 1000 < reply.usage.prompt_tokens <= KEYED_MAX_PROMPT


def test_max_tokens_is_capped_to_what_fits_in_the_context(servers):
    api = client(servers["open"], None)
    reply = api.chat.completions.create(model="x", messages=user(LONG * 285), max_tokens=500)
    room = CONTEXT - reply.usage.prompt_tokens
    assert 0 < room < 100, reply.usage
    assert reply.usage.completion_tokens == room and reply.choices[0].finish_reason == "length"
    chunks = list(api.chat.completions.create(model="x", messages=user(LONG * 285), max_tokens=10**9, stream=True,
                                              stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == room


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_a_client_that_disconnects_stops_its_generation(servers, stream):
    """The slot is released only once the generation has ended, so ``running`` dropping to 0 right
    after the client leaves (a full reply takes several seconds) shows the generation stopped; the
    server's CPU time confirms it."""
    url, pid = servers["open"], servers["open_process"].pid
    wait_for(lambda: health(url)["running"] == 0, 30, "an idle server")
    body = {"model": "x", "messages": user("Tell me a long story."), "max_tokens": 2000, "stream": stream}
    running = []
    if stream:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=TIMEOUT) as response:
            lines = (line for line in response.iter_lines() if line.startswith("data: "))
            for _ in range(4):
                next(lines)
            running.append(health(url)["running"])
    else:
        def watch():  # while the client waits for its reply
            end = time.monotonic() + 1.5
            while time.monotonic() < end and not running:
                if health(url)["running"] == 1:
                    running.append(1)
                time.sleep(0.05)

        watcher = threading.Thread(target=watch)
        watcher.start()
        with pytest.raises(httpx.ReadTimeout):
            with httpx.Client(timeout=httpx.Timeout(TIMEOUT, read=2)) as http:
                http.post(f"{url}/v1/chat/completions", json=body)
        watcher.join()
    assert running == [1]
    took = wait_for(lambda: health(url)["running"] == 0, 3, "the gone client's generation to stop")
    assert took < 1.5, f"the generation ran on {took:.1f} s after the client left"
    before = cpu_seconds(pid)
    time.sleep(1)
    assert cpu_seconds(pid) - before < 0.5, "the server kept computing after the client left"


def test_a_request_over_the_time_limit_is_stopped(servers):
    api = client(servers["keyed"])
    start = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        api.chat.completions.create(model="x", messages=user("Tell me a long story."), max_tokens=2000)
    took = time.monotonic() - start
    assert info.value.status_code == 504 and info.value.code == "request_timeout"
    assert f"API_REQUEST_TIMEOUT={KEYED_TIMEOUT} s" in info.value.message
    assert KEYED_TIMEOUT - 0.2 < took < KEYED_TIMEOUT + 3, took
    pieces = []
    start = time.monotonic()
    with pytest.raises(openai.APIError) as info:
        for chunk in api.chat.completions.create(model="x", messages=user("Tell me a long story."), max_tokens=2000, stream=True):
            pieces.append(chunk)
    assert "API_REQUEST_TIMEOUT" in str(info.value) and len(pieces) > 5
    assert time.monotonic() - start < KEYED_TIMEOUT + 3
    assert health(servers["keyed"])["running"] == 0


STRICT = [
    ({"stream": "true"}, "stream", "valid boolean"),
    ({"stream": 1}, "stream", "valid boolean"),
    ({"n": "2"}, "n", "valid integer"),
    ({"n": 2.0}, "n", "valid integer"),
    ({"n": 17}, "n", "less than or equal to 16"),
    ({"n": 2, "stream": True}, "n", "cannot be streamed"),
    ({"temperature": "0.5"}, "temperature", "valid number"),
    ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"max_tokens": "10"}, "max_tokens", "valid integer"),
    ({"stop": 5}, "stop", "string or a list of strings"),
    ({"stop": ["a", 1]}, "stop", "string or a list of strings"),
    ({"tool_choice": "sometimes"}, "tool_choice", "'none', 'auto', 'required'"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", "valid boolean"),
    ({"messages": "hi"}, "messages", "valid list"),
    ({"messages": [{"role": "user", "content": None}]}, "messages[0].content", "null is allowed only on an assistant"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "null is allowed only on an assistant"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "got a number"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, "messages[0].content", "needs 'text' to be a string"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": None}, {"role": "user", "content": "b"}]},
     "messages[1].content", "null is allowed only on an assistant message with tool_calls"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": 1}}]},
                   {"role": "tool", "content": "r"}]}, "messages[1].tool_calls[0].function.arguments", "JSON string"),
]


@pytest.mark.parametrize("fields, param, words", STRICT, ids=[f"{p}-{i}" for i, (_, p, _) in enumerate(STRICT)])
def test_wrong_types_are_400_naming_the_field(servers, fields, param, words):
    body = {"model": "x", "messages": user("hi"), **fields}
    response = httpx.post(f"{servers['keyed']}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=TIMEOUT)
    assert response.status_code == 400, response.text
    payload = response.json()
    assert set(payload) == {"error"}, payload  # OpenAI's shape, no pydantic dump beside it
    assert payload["error"]["param"] == param and words in payload["error"]["message"], payload
    assert payload["error"]["type"] == "invalid_request_error"


def test_content_null_is_accepted_where_openai_allows_it(servers):
    reply = client(servers["keyed"]).chat.completions.create(model="x", max_tokens=2, messages=[
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                               "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}])
    assert reply.usage.completion_tokens == 2
    sampled = client(servers["keyed"]).chat.completions.create(model="x", messages=user("Hi"), n=3, max_tokens=4,
                                                               temperature=1.0, extra_body={"do_sample": True})
    assert [c.index for c in sampled.choices] == [0, 1, 2]  # n > 1 works (not streamed)


def _stop_with(sig: int, process: subprocess.Popen, url: str) -> None:
    """A generation runs and a request waits when ``sig`` arrives: the process ends within seconds,
    the waiting request gets an OpenAI-shaped 503, the running stream an error event, and nothing
    logs a 500 or a traceback."""
    api = client(url, None)
    results: dict = {}

    def streamer():
        pieces = []
        try:
            for chunk in api.chat.completions.create(model="x", messages=user("Tell me a long story."), max_tokens=2000, stream=True):
                pieces.append(chunk)
            results["stream"] = (None, pieces)
        except Exception as exc:  # noqa: BLE001 - the outcome is what is checked
            results["stream"] = (exc, pieces)

    def waiter():
        try:
            results["waiting"] = api.chat.completions.create(model="x", messages=user("Hi"), max_tokens=4)
        except Exception as exc:  # noqa: BLE001
            results["waiting"] = exc

    threads = [threading.Thread(target=streamer)]
    threads[0].start()
    wait_for(lambda: health(url)["running"] == 1, 30, "the stream to start")
    threads.append(threading.Thread(target=waiter))
    threads[1].start()
    wait_for(lambda: health(url)["waiting"] == 1, 30, "the second request to wait")
    sent = time.monotonic()
    process.send_signal(sig)
    process.wait(timeout=30)
    took = time.monotonic() - sent
    for thread in threads:
        thread.join(timeout=30)
    output = process.stdout.read()
    name = signal.Signals(sig).name
    assert took < 5, f"{name}: the server took {took:.1f} s to stop:\n{output[-3000:]}"
    waiting = results["waiting"]
    assert isinstance(waiting, openai.APIStatusError) and waiting.status_code == 503, (name, waiting)
    assert waiting.code == "server_shutting_down" and "shutting down" in waiting.message
    error, pieces = results["stream"]
    assert pieces and isinstance(error, openai.APIError) and "shutting down" in str(error), (name, error, len(pieces))
    assert "Traceback" not in output and '" 500' not in output, output[-3000:]
    assert '" 503' in output  # the waiting request, logged as what it got


@pytest.mark.slow
def test_sigterm_and_sigint_stop_the_server_within_seconds(tiny_model, tmp_path):
    config = tmp_path / "api.yaml"
    config.write_text(f"model_name_or_path: {tiny_model}\ntemplate: llama3\ndo_sample: false\n")
    limits = dict(MAX_CONCURRENT="1", API_MAX_QUEUE="4", API_LOG_LEVEL="info")
    with api_process(str(config), **limits) as (term, term_url), api_process(str(config), **limits) as (interrupt, interrupt_url):
        wait_ready(term_url, term)  # both start side by side
        wait_ready(interrupt_url, interrupt)
        _stop_with(signal.SIGTERM, term, term_url)
        _stop_with(signal.SIGINT, interrupt, interrupt_url)
    assert term.returncode == -signal.SIGTERM  # uvicorn re-raises the signal once it has shut down
    assert interrupt.returncode == 130


def test_load_64_streams_and_abusive_clients(servers):
    """64 well-behaved streams at once (greedy: each must equal its reply served alone), beside
    huge bodies, huge prompts and clients that leave mid-stream; memory stays bounded and the server
    answers at once afterwards."""
    url, pid = servers["open"], servers["open_process"].pid
    api = client(url, None)
    prompts = [f"Tell me about the number {i}." for i in range(8)]
    reference = {p: api.chat.completions.create(model="x", messages=user(p), max_tokens=24).choices[0].message.content for p in prompts}
    wait_for(lambda: health(url)["running"] == 0, 30, "an idle server")
    rss_before = rss_bytes(pid)
    peak, sampling = [rss_before], threading.Event()

    def sample():
        while not sampling.wait(0.1):
            peak.append(rss_bytes(pid))

    def well_behaved(i):
        chunks = list(api.chat.completions.create(model="x", messages=user(prompts[i % 8]), max_tokens=24, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return prompts[i % 8], text, [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]

    def huge_body(_):
        return httpx.post(f"{url}/v1/chat/completions", json={"messages": user("a" * (OPEN_MAX_BODY * 2))}, timeout=TIMEOUT).status_code

    def huge_prompt(_):
        try:
            api.chat.completions.create(model="x", messages=user(LONG * 40_000))
        except openai.BadRequestError as exc:
            return exc.code

    def leaver(_):
        body = {"messages": user("Tell me a long story."), "max_tokens": 2000, "stream": True}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=TIMEOUT) as response:
            lines = (line for line in response.iter_lines() if line.startswith("data: "))
            return sum(1 for _ in zip(range(3), lines))

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=80) as pool:
            good = [pool.submit(well_behaved, i) for i in range(64)]
            bad = {kind: [pool.submit(fn, i) for i in range(3)] for kind, fn in
                   (("body", huge_body), ("prompt", huge_prompt), ("leaver", leaver))}
            results = [f.result(timeout=120) for f in good]
            outcomes = {kind: [f.result(timeout=120) for f in futures] for kind, futures in bad.items()}
    finally:
        sampling.set()
        sampler.join()
    took = time.monotonic() - start
    assert took < 90, f"the load took {took:.0f} s"
    for prompt, text, finish in results:
        assert text == reference[prompt] and len(finish) == 1, (prompt, text, reference[prompt], finish)
    assert outcomes == {"body": [413] * 3, "prompt": ["context_length_exceeded"] * 3, "leaver": [3] * 3}
    grown = max(peak) - rss_before
    print(f"load: {took:.1f} s; server RSS {rss_before / 2**20:.0f} MiB, peak +{grown / 2**20:.0f} MiB")
    assert grown < 300 * 2**20, f"the server grew by {grown / 2**20:.0f} MiB under load"
    wait_for(lambda: health(url) == {**health(url), "running": 0, "waiting": 0}, 5, "the leavers' generations to stop")
    start = time.monotonic()
    assert api.chat.completions.create(model="x", messages=user("Hi"), max_tokens=4).choices[0].message.content
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("name, value, words", [
    ("API_REQUEST_TIMEOUT", "soon", "is not a number of seconds"),
    ("API_MAX_BODY_BYTES", "0", "must be at least 1"),
    ("API_MAX_PROMPT_TOKENS", "lots", "is not a whole number"),
])
def test_a_bad_limit_variable_stops_the_server_before_the_model_loads(tmp_path, name, value, words):
    config = tmp_path / "api.yaml"
    config.write_text("model_name_or_path: /nowhere/at/all\ntemplate: llama3\n")
    result = run_cli("api", str(config), env={name: value}, timeout=120)
    assert result.returncode == 2 and f"{name}={value!r} {words}" in result.stderr, result.stderr


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


def test_a_waiting_client_that_leaves_gives_up_its_place(qwen):
    template, tokenizer = qwen
    engine = ScriptedEngine(template, tokenizer, {})
    with scripted_server(engine, max_concurrent=1, max_queue=1) as url:
        api = client(url, None)
        engine.gate.clear()
        holder = api.chat.completions.create(model="scripted", messages=user("first"), stream=True)
        next(iter(holder))
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/chat/completions", json={"messages": user("second")}, timeout=httpx.Timeout(TIMEOUT, read=1))
        wait_for(lambda: health(url)["waiting"] == 0, 2, "the gone client to leave the line")
        result = {}
        waiter = threading.Thread(target=lambda: result.setdefault("reply", api.chat.completions.create(
            model="scripted", messages=user("third"))))
        waiter.start()  # its place is free again: this one waits instead of getting a 429
        wait_for(lambda: health(url)["waiting"] == 1, 5, "the third request to wait")
        engine.gate.set()
        waiter.join(timeout=30)
        assert result["reply"].choices[0].message.content == "plain words here"
        assert engine.prompts[-1].count("third") == 1 and not any("second" in p for p in engine.prompts)


def test_the_time_limit_counts_waiting_and_ends_streams_with_an_error(qwen):
    """An engine without ``cancel=`` (this one) still has its stream cancelled at the time limit."""
    template, tokenizer = qwen
    engine = ScriptedEngine(template, tokenizer, {})
    with scripted_server(engine, max_concurrent=1, max_queue=4, request_timeout=1.5) as url:
        api = client(url, None)
        engine.gate.clear()
        holder = api.chat.completions.create(model="scripted", messages=user("first"), stream=True)
        next(iter(holder))
        start = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            api.chat.completions.create(model="scripted", messages=user("second"))
        assert info.value.status_code == 504 and "API_REQUEST_TIMEOUT=1.5 s" in info.value.message
        assert time.monotonic() - start < 5
        with pytest.raises(openai.APIError, match="API_REQUEST_TIMEOUT"):
            list(holder)
        assert engine.cancelled.is_set()
        wait_for(lambda: health(url)["running"] == 0, 2, "the slot to be released")


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
