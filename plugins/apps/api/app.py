"""The OpenAI-compatible app: ``GET /v1/models`` and ``POST /v1/chat/completions`` (SSE streaming).

- Bearer authentication when an API key is set (401 otherwise), on every /v1 route.
- At most ``max_concurrent`` generations run at once; up to ``max_queue`` more wait for a slot;
  beyond that a request gets 429 with ``Retry-After`` instead of piling up.
- Limits, checked before work of note: a body over ``max_body_bytes`` is a 413 (read no further
  than the limit); a prompt the model's context (or ``max_prompt_tokens``) cannot hold is a 400,
  decided from its length in characters when that is enough, else from its tokens; ``max_tokens``
  is capped to what fits in the context.
- Every request is a :class:`Job` with a cancellation event the engine checks after every token:
  set when the client disconnects, when ``request_timeout`` passes, or when the server shuts down
  (:func:`begin_shutdown`, called from the signal handler). Its slot is released only once the
  generation has ended, so a freed slot means no generation left running.
- Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``; a malformed
  request is a 400 that names the field (``param``); nothing we can name ends in a 500.
- Tool calls: the tools are offered through the chat template, and a reply written in the
  template's function format is returned as OpenAI ``tool_calls`` (``finish_reason: tool_calls``).
  While streaming, text is held back only as long as it may still be the start of a tool call.

fastapi and starlette are imported inside :func:`create_app` (the ``api`` extra).
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations, which
# name classes imported inside create_app.
import asyncio
import collections
import hmac
import json
import logging
import re
import threading
import time
import uuid
from typing import Any

from tuneforge.chat.engine import accepts_cancel
from tuneforge.errors import TuneforgeError
from tuneforge.chat.tools import MessageError, from_openai, may_be_tool_call, parse_tool_calls, tool_call_heads

log = logging.getLogger("uvicorn.error")  # printed with uvicorn's own lines, at its API_LOG_LEVEL

#: Defaults of the limits (the environment variables of `tuneforge api` override them).
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 600.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code, self.headers = status, message, type, param, code, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ----------------------------------------------------------------------------------- jobs


class Job:
    """One request: why it was stopped (``disconnect``, ``timeout``, ``shutdown``) and the event the
    engine checks after every token. Touched only on the event loop's thread (except ``cancel``)."""

    def __init__(self, request_id: str, timeout: float | None):
        self.id, self.timeout = request_id, timeout
        self.started = time.monotonic()
        self.cancel = threading.Event()
        self.reason: str | None = None
        self.finished = False
        self._on_stop: list = []
        self._on_finish: list = []

    def stop(self, reason: str) -> None:
        if self.finished or self.reason is not None:
            return
        self.reason = reason
        self.cancel.set()
        log.info("%s stopped after %.1f s: %s", self.id, time.monotonic() - self.started, reason)
        callbacks, self._on_stop = self._on_stop, []
        for callback in callbacks:
            callback()

    def on_stop(self, callback) -> None:
        """Call ``callback`` when the job is stopped (at once if it already is)."""
        if self.reason is not None:
            callback()
        else:
            self._on_stop.append(callback)

    def finish(self) -> None:
        """The request is answered: later disconnects (the connection closing) are no stop."""
        if not self.finished:
            self.finished = True
            for callback in self._on_finish:
                callback()

    def error(self) -> ApiError:
        if self.reason == "timeout":
            return ApiError(504, f"the request ran longer than API_REQUEST_TIMEOUT={self.timeout:g} s and was stopped; ask for "
                            "fewer tokens (max_tokens) or raise API_REQUEST_TIMEOUT", type="server_error", code="request_timeout")
        if self.reason == "shutdown":
            return shutting_down()
        return ApiError(499, "the client closed the request", code="client_closed_request")


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down; retry once it is back (or on another instance)", type="server_error",
                    code="server_shutting_down", headers={"Retry-After": "5"})


class Limiter:
    """A bound on concurrent generations with a bounded, first-come first-served waiting line.

    A waiter whose job is stopped (client gone, time limit, shutdown) leaves the line at once.
    """

    def __init__(self, max_concurrent: int, max_queue: int):
        self.max_concurrent, self.max_queue = max(1, max_concurrent), max(0, max_queue)
        self.running = 0
        self._waiters: collections.deque = collections.deque()

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    async def acquire(self, job: Job) -> "Slot":
        if job.reason is not None:
            raise job.error()
        if self.running < self.max_concurrent and not self.waiting:
            self.running += 1
            return Slot(self)
        if self.waiting >= self.max_queue:
            raise ApiError(429, f"the server is busy: {self.running} generation(s) running and {self.waiting} waiting "
                           f"(MAX_CONCURRENT={self.max_concurrent}, API_MAX_QUEUE={self.max_queue}); retry later",
                           type="rate_limit_error", code="server_busy", headers={"Retry-After": "1"})
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        job.on_stop(lambda: waiter.done() or waiter.cancel())
        try:
            await waiter  # resolved by _handover: the slot passes from the releaser to us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a slot, but cancelled before taking it
                self._handover()
            else:
                waiter.cancel()
            if job.reason is not None:
                raise job.error() from None
            raise
        finally:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass
        return Slot(self)

    def _handover(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.running -= 1


class Slot:
    def __init__(self, limiter: Limiter):
        self._limiter: Limiter | None = limiter

    def release(self) -> None:
        if self._limiter is not None:
            self._limiter._handover()
            self._limiter = None


# ----------------------------------------------------------------------------------- the body limit


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413 before anything parses it.

    The body is read here (up to the limit) and handed to the app in one piece; after it, the app's
    ``receive`` is the server's again, so the app still hears a client disconnect. An oversized
    body is read to its end and dropped (up to a bound), so the client, still sending, gets the
    413 rather than a reset connection.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    pass
        if declared is not None and declared > self.max_bytes:
            return await self._refuse(receive, send, f"{declared} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away while sending
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._refuse(receive, send, f"more than {self.max_bytes} bytes", more=message.get("more_body", False))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, handed = b"".join(chunks), False

        async def replay():
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, receive, send, size: str, more: bool = True):
        drained = 0
        while more and drained <= 16 * self.max_bytes + (64 << 20):
            message = await receive()
            if message["type"] != "http.request":
                return
            drained += len(message.get("body", b""))
            more = message.get("more_body", False)
        error = ApiError(413, f"the request body is {size}; this server takes at most {self.max_bytes} bytes "
                              f"(API_MAX_BODY_BYTES={self.max_bytes})", code="request_too_large")
        payload = json.dumps(error.body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload, "more_body": False})


# ----------------------------------------------------------------------------------- helpers


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def _tool_calls(calls: list[dict]) -> list[dict]:
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}} for c in calls]


def _param(loc) -> str:
    """pydantic's ``("body", "messages", 0, "role")`` as OpenAI names it: ``messages[0].role``."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _longest_token(tokenizer) -> int | None:
    """The most characters one token stands for (its vocabulary string is at least as long as the
    text it decodes to), so ``characters > tokens * this`` proves a prompt too long without
    tokenising it."""
    try:
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        return max(len(p) for p in pieces if isinstance(p, str)) or None
    except Exception:  # a tokenizer without a vocabulary to list: tokenise every prompt instead
        return None


def _prompt_chars(messages: list[dict], system: str | None, tools) -> int:
    size = len(system or "") + (len(json.dumps(tools, ensure_ascii=False)) if tools else 0)
    return size + sum(len(m.get("content") or "") for m in messages)


# ----------------------------------------------------------------------------------- the app


def create_app(engine, *, model_name: str, api_key: str | None = None, max_concurrent: int = 1, max_queue: int = 16,
               root_path: str = "", max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, max_prompt_tokens: int | None = None,
               request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT, media_dir: str | None = None,
               allow_remote_media: bool = False):
    """The ASGI app. ``max_prompt_tokens`` (None: the context only) and ``request_timeout``
    (seconds, waiting included; None or 0: none) bound each request; see the module docstring.
    ``media_dir`` (API_MEDIA_DIR): the folder image_url file paths may point into (None: no local
    paths); ``allow_remote_media`` (API_ALLOW_REMOTE_MEDIA): fetch http(s) image URLs (see media.py)."""
    import shutil
    import tempfile
    from contextlib import asynccontextmanager

    import anyio
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .protocol import ChatCompletionRequest

    limiter = Limiter(max_concurrent, max_queue)
    jobs: set[Job] = set()
    state = {"closing": False, "loop": None}
    context = getattr(engine, "context_length", None)
    # the most prompt tokens a request may have: the context less one token to generate, and API_MAX_PROMPT_TOKENS
    bounds = [b for b in ((context - 1) if context else None, max_prompt_tokens) if b and b > 0]
    prompt_limit = min(bounds) if bounds else None
    longest_token = _longest_token(engine.tokenizer) if prompt_limit else None
    cancellable = accepts_cancel(engine.generate)
    timeout = request_timeout or None
    # Tokenising a prompt near the body limit takes a second of CPU: a few at a time, not one per request.
    encoders = anyio.CapacityLimiter(max(2, limiter.max_concurrent))

    from .media import ImageParts

    image_folder = tempfile.mkdtemp(prefix="tuneforge-api-images-")
    images = ImageParts(engine, image_folder, media_dir=media_dir, allow_remote=allow_remote_media,
                        max_bytes=max_body_bytes or DEFAULT_MAX_BODY_BYTES)

    @asynccontextmanager
    async def lifespan(app):
        state["loop"] = asyncio.get_running_loop()
        try:
            yield
        finally:
            shutil.rmtree(image_folder, ignore_errors=True)

    app = FastAPI(title="tuneforge API", root_path=root_path, version="1", lifespan=lifespan)
    if max_body_bytes:
        app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    created = int(time.time())
    app.state.limiter = limiter

    class EventStream(StreamingResponse):
        """Server-sent events whose generator is always closed and whose ``cleanup`` always runs,
        even when the client leaves before the first event."""

        media_type = "text/event-stream"

        def __init__(self, events, cleanup):
            super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            self.cleanup = cleanup

        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                with anyio.CancelScope(shield=True):
                    try:
                        await self.body_iterator.aclose()
                    finally:
                        self.cleanup()

    def begin_shutdown() -> None:
        """Refuse new requests, send the waiting ones a 503 and stop the running ones (loop thread)."""
        state["closing"] = True
        for job in list(jobs):
            job.stop("shutdown")

    def begin_shutdown_threadsafe() -> None:
        """For a signal handler or another thread: :func:`begin_shutdown` on the app's loop."""
        loop = state["loop"]
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(begin_shutdown)

    app.state.begin_shutdown = begin_shutdown_threadsafe

    def start_job(request: Request) -> Job:
        job = Job(f"chatcmpl-{uuid.uuid4().hex}", timeout)
        jobs.add(job)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(timeout, job.stop, "timeout") if timeout else None

        async def watch():  # the client's disconnect arrives through receive(), once the body is read
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    job.stop("disconnect")
                    return

        watcher = asyncio.ensure_future(watch())
        job._on_finish += [lambda: jobs.discard(job), watcher.cancel] + ([timer.cancel] if timer is not None else [])
        return job

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        lines, param = [], None
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                at = err.get("loc", ("body", "?"))[-1]
                reason = (err.get("ctx") or {}).get("error", "")
                lines.append(f"the body is not valid JSON (at character {at}: {reason})")
                param = param or "body"
                continue
            where = _param(err.get("loc", ()))
            param = param or where
            message = re.sub(r"^Value error, ", "", str(err.get("msg", "")))
            lines.append(f"{where}: {message}")
        return JSONResponse(ApiError(400, "invalid request: " + "; ".join(lines), param=param, code="invalid_request").body(),
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), type=kind).body(), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):  # a bug: still answered in OpenAI's shape
        return JSONResponse(ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").body(), status_code=500)

    async def authenticate(request: Request) -> None:
        if not api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "invalid or missing API key: send the header 'Authorization: Bearer <API_KEY>'",
                           type="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "tuneforge"}

    @app.get("/health")
    async def health():
        return {"status": "shutting_down" if state["closing"] else "ok", "engine": engine.name,
                "running": limiter.running, "waiting": limiter.waiting}

    @app.get("/v1/models", dependencies=[Depends(authenticate)])
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id}", dependencies=[Depends(authenticate)])
    async def get_model(model_id: str):
        if model_id != model_name:
            raise ApiError(404, f"model {model_id!r} does not exist; this server serves {model_name!r}", type="not_found_error", param="model")
        return model_card()

    def too_long(size: str, note: str) -> ApiError:
        return ApiError(400, f"the prompt is {size}; {note}: shorten the conversation", param="messages",
                        code="context_length_exceeded")

    def limit_note() -> str:
        notes = []
        if context:
            notes.append(f"the model's context is {context} tokens, prompt and reply together")
        if max_prompt_tokens:
            notes.append(f"API_MAX_PROMPT_TOKENS={max_prompt_tokens}")
        return f"this server takes prompts of at most {prompt_limit} tokens (" + "; ".join(notes) + ")"

    @app.post("/v1/chat/completions", dependencies=[Depends(authenticate)])
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        if state["closing"]:
            raise shutting_down()
        try:
            messages, system = await anyio.to_thread.run_sync(
                lambda: from_openai([m.model_dump(exclude_none=True) for m in body.messages], image=images))
        except MessageError as exc:
            raise ApiError(400, exc.message if exc.param == "messages" else str(exc), param=exc.param) from None
        tools = None
        if body.tools and body.tool_choice != "none":
            tools = [t.model_dump() for t in body.tools]
        if body.stream and body.n > 1:
            raise ApiError(400, "n > 1 cannot be streamed; send stream: false or n: 1", param="n")
        chars = _prompt_chars(messages, system, tools)
        if prompt_limit and longest_token and chars > prompt_limit * longest_token:
            raise too_long(f"{chars} characters, more than {prompt_limit} tokens can hold", limit_note())
        job = start_job(request)
        handed_over = False
        try:
            try:
                ids = await anyio.to_thread.run_sync(engine.encode, messages, system, tools, limiter=encoders)
            except (ValueError, TuneforgeError) as exc:  # the template cannot render this conversation (bad tool schema, ...)
                raise ApiError(400, str(exc), param="messages") from None
            if prompt_limit and len(ids) > prompt_limit:
                raise too_long(f"{len(ids)} tokens", limit_note())
            max_new = body.max_completion_tokens or body.max_tokens or engine.settings.max_new_tokens
            if context:
                max_new = min(max_new, context - len(ids))
            settings = engine.settings.updated(
                temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, repetition_penalty=body.repetition_penalty,
                max_new_tokens=max_new, stop=body.stop, do_sample=body.do_sample,
            )
            slot = await limiter.acquire(job)
            if body.stream:
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                events = _stream_events(engine, messages, system, tools, settings, job, slot, model_name, include_usage)
                handed_over = True
                return EventStream(events, cleanup=lambda: (slot.release(), job.finish()))
            try:
                responses = await _generate(engine, messages, system, tools, settings, body.n, job, cancellable)
            finally:
                slot.release()
        finally:
            if not handed_over:
                job.finish()
        if job.reason is not None:
            raise job.error()
        choices = []
        for index, response in enumerate(responses):
            message: dict[str, Any] = {"role": "assistant", "content": response.text}
            finish = response.finish_reason
            parsed = parse_tool_calls(engine.template, response.text, engine.tokenizer) if tools else None
            if parsed:
                content, calls = parsed
                message = {"role": "assistant", "content": content or None, "tool_calls": _tool_calls(calls)}
                finish = "tool_calls"
            choices.append({"index": index, "message": message, "finish_reason": finish, "logprobs": None})
        prompt_tokens = responses[0].prompt_tokens if responses else 0
        return {
            "id": job.id, "object": "chat.completion", "created": int(time.time()), "model": model_name,
            "choices": choices, "usage": _usage(prompt_tokens, sum(r.completion_tokens for r in responses)),
        }

    return app


async def _generate(engine, messages, system, tools, settings, n, job: Job, cancellable: bool):
    """``engine.generate`` in a worker thread, stopped through the job's event. The wait is not
    abandoned when the request is cancelled: the slot is released only after the thread ends."""
    import anyio

    def run():
        if cancellable:
            return engine.generate(messages, system, tools, settings, n, cancel=job.cancel)
        return engine.generate(messages, system, tools, settings, n)

    try:
        return await anyio.to_thread.run_sync(run)
    except Exception as exc:
        if job.reason is not None:
            raise job.error() from None
        raise ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error") from None


def _sse(data) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream_events(engine, messages, system, tools, settings, job: Job, slot: Slot, model_name, include_usage):
    """The reply as SSE ``data:`` lines. The engine thread is waited for without abandoning it
    (a cancelled stream ends within a token), so when this ends no generation is left running."""
    import anyio

    created = int(time.time())

    def chunk(delta: dict, finish: str | None = None) -> str:
        return _sse({"id": job.id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    stream = None
    try:
        stream = await anyio.to_thread.run_sync(engine.stream, messages, system, tools, settings)
        job.on_stop(stream.cancel)
        yield chunk({"role": "assistant", "content": ""})
        heads = tool_call_heads(engine.template, engine.tokenizer) if tools else None
        holding, held = tools is not None, ""
        while True:
            piece = await anyio.to_thread.run_sync(next, stream, None)
            if piece is None:
                break
            if holding:
                held += piece
                if may_be_tool_call(heads, held):
                    continue
                holding, piece, held = False, held, ""
            yield chunk({"content": piece})
        if job.reason is not None:  # stopped (time limit, shutdown): say so instead of a normal end
            yield _sse(job.error().body())
            return
        response = stream.response
        finish = response.finish_reason if response else "stop"
        if held:
            parsed = parse_tool_calls(engine.template, held, engine.tokenizer)
            if parsed:
                content, calls = parsed
                if content:
                    yield chunk({"content": content})
                for index, call in enumerate(_tool_calls(calls)):
                    yield chunk({"tool_calls": [{"index": index, **call}]})
                finish = "tool_calls"
            else:
                yield chunk({"content": held})
        yield chunk({}, finish)
        if include_usage and response is not None:
            yield _sse({"id": job.id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                        "choices": [], "usage": _usage(response.prompt_tokens, response.completion_tokens)})
        job.finish()
        yield _sse("[DONE]")
    except Exception as exc:  # the status line is sent already: report in the stream, as OpenAI does
        error = job.error() if job.reason is not None else \
            ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error")
        yield _sse(error.body())
    finally:
        if stream is not None:
            stream.cancel()
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                await anyio.to_thread.run_sync(_drain, stream, abandon_on_cancel=True)
        slot.release()


def _drain(stream) -> None:
    """Read a cancelled stream to its end: returns once the engine's generation has stopped."""
    try:
        for _ in stream:
            pass
    except Exception:
        pass
