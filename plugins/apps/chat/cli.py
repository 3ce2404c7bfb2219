"""`tuneforge chat CONFIG`: talk to a model (plus adapter) in the terminal, or answer one --query.

Replies stream token by token; the conversation is kept as history for the next turn. Type
``clear`` to start a new conversation and ``exit`` to quit (end of input quits too).
"""

from __future__ import annotations

import sys

from tuneforge import CommandSpec, hookimpl


def register(parser):
    parser.add_argument("config", help="YAML config (model_name_or_path, adapter_name_or_path, template, generation keys)")
    parser.add_argument("--query", help="answer this one message and exit")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="an image for the (first) message, repeatable; multimodal templates only (e.g. qwen2_vl). "
                             "Interactively: `/image PATH` attaches one to the next message")


def _user(text: str, images: list[str]) -> dict:
    """A user message with its images: one <image> each, put first unless the text places them."""
    if not images:
        return {"role": "user", "content": text}
    if "<image>" not in text:
        text = "<image>" * len(images) + text
    return {"role": "user", "content": text, "images": list(images)}


def _reply(engine, history: list[dict]) -> str:
    reply = ""
    for piece in engine.stream(history):
        reply += piece
        sys.stdout.write(piece)
        sys.stdout.flush()
    print()
    return reply


def run(args) -> int:
    from tuneforge.plan import prepare

    prepared = prepare(args.config, args.overrides, blocked=args.disable_plugin, inference=True)
    for warning in prepared.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    from tuneforge.chat.engine import engine_for

    engine = engine_for(prepared)
    pending = list(args.image)
    if args.query is not None:
        _reply(engine, [_user(args.query, pending)])
        return 0
    print("Type a message; `clear` removes the history, `exit` quits.", flush=True)
    history: list[dict] = []
    while True:
        try:
            query = input("\nUser: ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        command = query.strip()
        if command == "exit":
            return 0
        if command == "clear":
            history = []
            print("History has been removed.", flush=True)
            continue
        if command.startswith("/image "):
            pending.append(command[len("/image "):].strip())
            print(f"(image attached to the next message: {pending[-1]})", flush=True)
            continue
        if not command:
            continue
        history.append(_user(query, pending))
        pending = []
        print("Assistant: ", end="", flush=True)
        history.append({"role": "assistant", "content": _reply(engine, history)})


@hookimpl
def tuneforge_commands():
    return [CommandSpec(name="chat", description="chat with a model in the terminal (--query answers once)",
                        register=register, run=run)]
