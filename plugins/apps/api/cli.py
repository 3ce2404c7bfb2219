"""`tuneforge api CONFIG`: an OpenAI-compatible server (``/v1/models``, ``/v1/chat/completions``).

Environment (LLaMA-Factory's names): ``API_HOST`` (default 127.0.0.1: loopback only), ``API_PORT``
(8000), ``API_KEY`` (Bearer authentication when set), ``API_MODEL_NAME`` (the model id served;
default the model folder's name), ``MAX_CONCURRENT`` (generations at once, default 1),
``FASTAPI_ROOT_PATH``; and ``API_MAX_QUEUE`` (requests that may wait for a slot before 429, default 16).
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


def _int_env(name: str, default: int) -> int:
    from tuneforge.errors import TuneforgeError

    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise TuneforgeError(f"{name}={value!r} is not a whole number") from None


def run(args) -> int:
    from tuneforge.errors import TuneforgeError
    from tuneforge.plan import prepare
    from tuneforge.specs import Requirement

    missing = [r for r in (Requirement("fastapi", ""), Requirement("uvicorn", ""), Requirement("sse_starlette", "")) if r.missing()]
    if missing:
        raise TuneforgeError(f"tuneforge api needs {', '.join(r.module for r in missing)}: pip install 'tuneforge[api]'")
    host = args.host or os.environ.get("API_HOST") or "127.0.0.1"
    port = args.port if args.port is not None else _int_env("API_PORT", 8000)
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
    app = create_app(engine, model_name=model_name, api_key=api_key, max_concurrent=_int_env("MAX_CONCURRENT", 1),
                     max_queue=_int_env("API_MAX_QUEUE", 16), root_path=os.environ.get("FASTAPI_ROOT_PATH", ""))
    print(f"serving {model_name!r} ({engine.name} engine) at http://{host}:{port}/v1 "
          f"(docs: http://{host}:{port}/docs; authentication: {'API_KEY' if api_key else 'none'})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=os.environ.get("API_LOG_LEVEL", "info"))
    return 0


@hookimpl
def tuneforge_commands():
    return [CommandSpec(name="api", description="serve the model with an OpenAI-compatible API (API_HOST, API_PORT, API_KEY)",
                        register=register, run=run)]
