"""`tuneforge webui`: the browser UI (Train, Evaluate & Predict, Chat, Export), generated from the plugins.

Environment, as LLaMA-Factory reads it: ``GRADIO_SERVER_NAME`` (default 127.0.0.1: this machine
only), ``GRADIO_SERVER_PORT`` (7860), ``GRADIO_SHARE`` (1/true: a public gradio.live link). Basic
authentication: ``--auth USER:PASSWORD`` or ``TUNEFORGE_WEBUI_AUTH=USER:PASSWORD``. Binding another
address than loopback, or sharing, without authentication prints a warning: whoever reaches the page
can start jobs that read and write files as this user.
"""

from __future__ import annotations

import os
import signal
import sys

from tuneforge import CommandSpec, hookimpl

LOOPBACK = ("127.0.0.1", "localhost", "::1")
AUTH_ENV = "TUNEFORGE_WEBUI_AUTH"


def register(parser):
    parser.add_argument("--host", help="address to bind (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--share", action="store_true", help="also serve a public gradio.live link (or GRADIO_SHARE=1)")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help=f"ask for this login (or ${AUTH_ENV})")
    parser.add_argument("--lang", choices=("en", "zh"), default="en", help="language the page opens in (switchable at the top)")
    parser.add_argument("--save-root", default="saves", help="folder of runs: <save-root>/<model>/<method>/<run> (default: saves)")
    parser.add_argument("--dataset-dir", default="data", help="dataset_info.json folder shown first (default: data)")
    parser.add_argument("--model-path", default="", help="model path filled in at start")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "y", "yes", "on")


def server_settings(args, environ=os.environ) -> dict:
    """Host, port, share and auth from the options and LLaMA-Factory's environment variables."""
    from tuneforge.errors import TuneforgeError

    host = args.host or environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port_text = str(args.port) if args.port is not None else environ.get("GRADIO_SERVER_PORT") or "7860"
    try:
        port = int(port_text)
    except ValueError:
        raise TuneforgeError(f"GRADIO_SERVER_PORT={port_text!r} is not a port number") from None
    share = args.share or _truthy(environ.get("GRADIO_SHARE"))
    auth_text = args.auth or environ.get(AUTH_ENV)
    auth = None
    if auth_text:
        user, sep, password = auth_text.partition(":")
        if not sep or not user or not password:
            raise TuneforgeError(f"--auth / {AUTH_ENV} must be USER:PASSWORD")
        auth = (user, password)
    return {"server_name": host, "server_port": port, "share": share, "auth": auth}


def exposure_warning(settings: dict) -> str | None:
    """The warning for a page others can reach, or None when only this machine can."""
    public = settings["server_name"] not in LOOPBACK
    if not (public or settings["share"]):
        return None
    where = "a public gradio.live link" if settings["share"] else f"{settings['server_name']}:{settings['server_port']}"
    if settings["auth"]:
        return f"warning: the web UI is reachable through {where}; it asks for the --auth login"
    return (f"warning: the web UI is reachable through {where} without a login: anyone who reaches it can start "
            f"training and export jobs that read and write files as this user. Set --auth USER:PASSWORD (or {AUTH_ENV}), "
            "or bind 127.0.0.1")


def run(args) -> int:
    from tuneforge.errors import TuneforgeError
    from tuneforge.specs import Requirement
    from tuneforge.plugins.apps.webui import INSTALL

    missing = [r.module for r in (Requirement("gradio", INSTALL), Requirement("pandas", INSTALL)) if r.missing()]
    if missing:
        raise TuneforgeError(f"tuneforge webui needs {', '.join(missing)}: {INSTALL}")
    settings = server_settings(args)
    warning = exposure_warning(settings)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    from tuneforge.plugin_manager import PluginManager
    from tuneforge.plugins.apps.webui.app import WebUI

    ui = WebUI(PluginManager(blocked=args.disable_plugin), save_root=args.save_root, dataset_dir=args.dataset_dir,
               model_path=args.model_path, lang=args.lang)
    demo = ui.build()

    def stop(signum, frame):  # SIGTERM ends the server like Ctrl-C does, so the job is stopped below
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        demo.queue().launch(server_name=settings["server_name"], server_port=settings["server_port"], share=settings["share"],
                            auth=settings["auth"], ssr_mode=False, show_error=True, footer_links=[])
    finally:
        if ui.runner.is_running():
            print("stopping the running job (it saves a checkpoint first)", file=sys.stderr, flush=True)
            ui.runner.terminate()
        ui.chat.unload()
    return 0


@hookimpl
def tuneforge_commands():
    return [CommandSpec(name="webui", description="the web UI: train, evaluate, chat and export in the browser (GRADIO_SERVER_NAME/PORT)",
                        register=register, run=run)]
