"""The OpenAI-compatible app: ``GET /v1/models`` and ``POST /v1/chat/completions`` (SSE streaming).

- Bearer authentication when an API key is set (401 otherwise), on every /v1 route.
- At most ``max_concurrent`` generations run at once; up to ``max_queue`` more wait for a slot;
  beyond that a request gets 429 with ``Retry-After`` instead of piling up.
- Errors use OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``; a malformed
  request is a 422 that names the field (FastAPI's ``detail`` list is kept beside it).
- Tool calls: the tools are offered through the chat template, and a reply written in the
  template's function format is returned as OpenAI ``tool_calls`` (``finish_reason: tool_calls``).
  While streaming, text is held back only as long as it may still be the start of a tool call.

fastapi, starlette and sse-starlette are imported inside :func:`create_app` (the ``api`` extra).
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations, which
# name classes imported inside create_app.
import asyncio
import hmac
import json
import time
import uuid
from typing import Any

from tuneforge.chat.tools import MessageError, from_openai, may_be_tool_call, parse_tool_calls, tool_call_heads


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code, self.headers = status, message, type, param, code, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Limiter:
    """A bound on concurrent generations with a bounded waiting line."""

    def __init__(self, max_concurrent: int, max_queue: int):
        self.max_concurrent, self.max_queue = max(1, max_concurrent), max(0, max_queue)
        self._semaphore = asyncio.Semaphore(self.max_concurrent)
        self.waiting = 0

    async def acquire(self) -> "Slot":
        if self._semaphore.locked():
            if self.waiting >= self.max_queue:
                raise ApiError(429, f"the server is busy: {self.max_concurrent} generation(s) running and {self.waiting} waiting "
                               f"(MAX_CONCURRENT={self.max_concurrent}, API_MAX_QUEUE={self.max_queue}); retry later",
                               type="rate_limit_error", code="server_busy", headers={"Retry-After": "1"})
            self.waiting += 1
            try:
                await self._semaphore.acquire()
            finally:
                self.waiting -= 1
        else:
            await self._semaphore.acquire()
        return Slot(self._semaphore)


class Slot:
    def __init__(self, semaphore: asyncio.Semaphore):
        self._semaphore: asyncio.Semaphore | None = semaphore

    def release(self) -> None:
        if self._semaphore is not None:
            self._semaphore.release()
            self._semaphore = None


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def _tool_calls(calls: list[dict]) -> list[dict]:
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}} for c in calls]


def create_app(engine, *, model_name: str, api_key: str | None = None, max_concurrent: int = 1, max_queue: int = 16,
               root_path: str = ""):
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.background import BackgroundTask
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .protocol import ChatCompletionRequest

    app = FastAPI(title="tuneforge API", root_path=root_path, version="1")
    limiter = Limiter(max_concurrent, max_queue)
    created = int(time.time())
    app.state.limiter = limiter

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        errors = exc.errors()
        lines, param = [], None
        for err in errors:
            if err.get("type") == "json_invalid":
                at = err.get("loc", ("body", "?"))[-1]
                reason = (err.get("ctx") or {}).get("error", "")
                lines.append(f"the body is not valid JSON (at character {at}: {reason})")
                param = param or "body"
                continue
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            where = ".".join(loc) or "body"
            param = param or where
            lines.append(f"{where}: {err.get('msg')}")
        body = ApiError(422, "invalid request: " + "; ".join(lines), param=param, code="invalid_request").body()
        body["detail"] = json.loads(json.dumps(errors, default=str))
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(ApiError(exc.status_code, str(exc.detail), type=kind).body(), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

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
        return {"status": "ok", "engine": engine.name}

    @app.get("/v1/models", dependencies=[Depends(authenticate)])
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id}", dependencies=[Depends(authenticate)])
    async def get_model(model_id: str):
        if model_id != model_name:
            raise ApiError(404, f"model {model_id!r} does not exist; this server serves {model_name!r}", type="not_found_error", param="model")
        return model_card()

    @app.post("/v1/chat/completions", dependencies=[Depends(authenticate)])
    async def chat_completions(body: ChatCompletionRequest):
        try:
            messages, system = from_openai([m.model_dump(exclude_none=True) for m in body.messages])
        except MessageError as exc:
            raise ApiError(422, exc.message if exc.param == "messages" else str(exc), param=exc.param) from None
        tools = None
        if body.tools and body.tool_choice != "none":
            tools = [t.model_dump() for t in body.tools]
        if body.stream and body.n > 1:
            raise ApiError(422, "n > 1 cannot be streamed; send stream: false or n: 1", param="n")
        settings = engine.settings.updated(
            temperature=body.temperature, top_p=body.top_p, top_k=body.top_k, repetition_penalty=body.repetition_penalty,
            max_new_tokens=body.max_completion_tokens or body.max_tokens, stop=body.stop, do_sample=body.do_sample,
        )
        try:
            engine.encode(messages, system, tools)
        except ValueError as exc:  # the template cannot render this conversation (bad tool schema, ...)
            raise ApiError(422, str(exc), param="messages") from None
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        slot = await limiter.acquire()
        if body.stream:
            from sse_starlette.sse import EventSourceResponse

            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream_events(engine, messages, system, tools, settings, slot, completion_id, model_name, include_usage)
            return EventSourceResponse(events, sep="\n", background=BackgroundTask(slot.release))
        try:
            responses = await run_in_threadpool(engine.generate, messages, system, tools, settings, body.n)
        except Exception as exc:
            raise ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error") from None
        finally:
            slot.release()
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
            "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model_name,
            "choices": choices, "usage": _usage(prompt_tokens, sum(r.completion_tokens for r in responses)),
        }

    return app


async def _in_thread(function, *args):
    """Run a blocking call in a worker thread; a cancelled request (client gone) stops waiting at once
    and the ``finally`` below cancels the generation, which ends the thread's call soon after."""
    import anyio

    return await anyio.to_thread.run_sync(function, *args, abandon_on_cancel=True)


async def _stream_events(engine, messages, system, tools, settings, slot, completion_id, model_name, include_usage):
    created = int(time.time())

    def chunk(delta: dict, finish: str | None = None) -> str:
        return json.dumps({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}, ensure_ascii=False)

    stream = None
    try:
        stream = await _in_thread(engine.stream, messages, system, tools, settings)
        yield chunk({"role": "assistant", "content": ""})
        heads = tool_call_heads(engine.template, engine.tokenizer) if tools else None
        holding, held = tools is not None, ""
        while True:
            piece = await _in_thread(next, stream, None)
            if piece is None:
                break
            if holding:
                held += piece
                if may_be_tool_call(heads, held):
                    continue
                holding, piece, held = False, held, ""
            yield chunk({"content": piece})
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
            yield json.dumps({"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model_name,
                              "choices": [], "usage": _usage(response.prompt_tokens, response.completion_tokens)})
        yield "[DONE]"
    except Exception as exc:  # the status line is sent already: report in the stream, as OpenAI does
        yield json.dumps(ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", type="server_error").body())
    finally:
        if stream is not None:
            stream.cancel()
        slot.release()
