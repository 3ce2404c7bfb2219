"""`tuneforge api CONFIG`: an OpenAI-compatible server (``/v1/models``, ``/v1/chat/completions``).

Environment (LLaMA-Factory's names): ``API_HOST`` (default 127.0.0.1: loopback only), ``API_PORT``
(8000), ``API_KEY`` (Bearer authentication when set), ``API_MODEL_NAME`` (the model id served;
default the model folder's name), ``MAX_CONCURRENT`` (generations at once, default 1),
``FASTAPI_ROOT_PATH``; and ours: ``API_MAX_QUEUE`` (requests that may wait for a slot before 429,
default 16), ``API_MAX_BODY_BYTES`` (413 above it, default 4 MiB), ``API_MAX_PROMPT_TOKENS`` (400
above it; default: the model's context only), ``API_REQUEST_TIMEOUT`` (seconds a request may take,
waiting included, default 600; 0: none), ``API_SHUTDOWN_TIMEOUT`` (seconds SIGTERM/SIGINT give
running requests before they are cut, default 5); images in ``image_url`` content parts (a
vision-language model): ``data:`` URLs always, local file paths only under ``API_MEDIA_DIR`` (unset:
none), http(s) URLs only with ``API_ALLOW_REMOTE_MEDIA=1``.
"""

from __future__ import annotations

import os
import sys
from pathlib import PurePath

from tuneforge import CommandSpec, hookimpl


def register(parser):
    parser.add_argument("config", help="YAML config (model_name_or_path, adapter_name_or_path, template, generation keys)")
    parser.add_argument("--host", help="address to bind (default: $API_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: $API_PORT or 8000)")


def _int_env(name: str, default: int, *, minimum: int | None = None) -> int:
    from tuneforge.errors import TuneforgeError

    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise TuneforgeError(f"{name}={value!r} is not a whole number") from None
    if minimum is not None and number < minimum:
        raise TuneforgeError(f"{name}={value!r} must be at least {minimum}")
    return number


def _seconds_env(name: str, default: float) -> float:
    from tuneforge.errors import TuneforgeError

    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise TuneforgeError(f"{name}={value!r} is not a number of seconds") from None
    if not number >= 0 or number == float("inf"):
        raise TuneforgeError(f"{name}={value!r} must be a finite number of seconds, 0 or more")
    return number


def run(args) -> int:
    from tuneforge.errors import TuneforgeError
    from tuneforge.plan import prepare
    from tuneforge.specs import Requirement

    missing = [r for r in (Requirement("fastapi", ""), Requirement("uvicorn", "")) if r.missing()]
    if missing:
        raise TuneforgeError(f"tuneforge api needs {', '.join(r.module for r in missing)}: pip install 'tuneforge[api]'")
    from tuneforge.plugins.apps.api.app import DEFAULT_MAX_BODY_BYTES, DEFAULT_REQUEST_TIMEOUT

    host = args.host or os.environ.get("API_HOST") or "127.0.0.1"
    port = args.port if args.port is not None else _int_env("API_PORT", 8000)
    # every variable is read before the model loads: a typo fails in a second, not after a minute
    limits = dict(max_concurrent=_int_env("MAX_CONCURRENT", 1, minimum=1), max_queue=_int_env("API_MAX_QUEUE", 16, minimum=0),
                  max_body_bytes=_int_env("API_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1),
                  max_prompt_tokens=_int_env("API_MAX_PROMPT_TOKENS", 0, minimum=0) or None,
                  request_timeout=_seconds_env("API_REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT) or None)
    grace = _seconds_env("API_SHUTDOWN_TIMEOUT", 5)
    media_dir = os.environ.get("API_MEDIA_DIR", "").strip() or None
    if media_dir and not os.path.isdir(media_dir):
        raise TuneforgeError(f"API_MEDIA_DIR={media_dir!r} is not a folder: set it to the folder whose images clients may "
                             "name by path, or unset it (then only data: URLs are read)")
    remote = os.environ.get("API_ALLOW_REMOTE_MEDIA", "").strip().lower()
    if remote not in ("", "0", "1", "true", "false"):
        raise TuneforgeError(f"API_ALLOW_REMOTE_MEDIA={remote!r}: use 1 (fetch http(s) image URLs) or 0")
    limits.update(media_dir=media_dir, allow_remote_media=remote in ("1", "true"))
    prepared = prepare(args.config, args.overrides, blocked=args.disable_plugin, inference=True)
    for warning in prepared.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    api_key = os.environ.get("API_KEY") or None
    model_name = os.environ.get("API_MODEL_NAME") or PurePath(str(prepared.config.model_name_or_path).rstrip("/")).name
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: serving on {host} without API_KEY: anyone who can reach this port can use the model", file=sys.stderr)

    import uvicorn

    from tuneforge.plugins.apps.api.app import create_app
    from tuneforge.chat.engine import engine_for

    engine = engine_for(prepared)
    app = create_app(engine, model_name=model_name, api_key=api_key, root_path=os.environ.get("FASTAPI_ROOT_PATH", ""), **limits)
    print(f"serving {model_name!r} ({engine.name} engine) at http://{host}:{port}/v1 "
          f"(docs: http://{host}:{port}/docs; authentication: {'API_KEY' if api_key else 'none'})", flush=True)

    class Server(uvicorn.Server):
        """uvicorn's server, whose SIGTERM/SIGINT also stops the app's generations and answers
        its waiting requests with 503 (uvicorn alone waits for them, then cancels them as 500s)."""

        def handle_exit(self, sig, frame):
            super().handle_exit(sig, frame)
            app.state.begin_shutdown()

    config = uvicorn.Config(app, host=host, port=port, log_level=os.environ.get("API_LOG_LEVEL", "info"),
                            timeout_graceful_shutdown=grace)
    interrupted = False
    try:
        Server(config).run()  # after SIGTERM uvicorn re-raises it, ending the process here
    except KeyboardInterrupt:  # SIGINT, re-raised the same way
        interrupted = True
    # The server has stopped and holds nothing to save: leave now. Tearing the interpreter down
    # (the finalizers of torch and the tokenizers) takes seconds more on a busy machine, which a
    # process manager's stop timeout would count against us.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130 if interrupted else 0)


@hookimpl
def tuneforge_commands():
    return [CommandSpec(name="api", description="serve the model with an OpenAI-compatible API (API_HOST, API_PORT, API_KEY)",
                        register=register, run=run)]
