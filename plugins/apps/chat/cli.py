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
    if args.query is not None:
        _reply(engine, [{"role": "user", "content": args.query}])
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
        if not command:
            continue
        history.append({"role": "user", "content": query})
        print("Assistant: ", end="", flush=True)
        history.append({"role": "assistant", "content": _reply(engine, history)})


@hookimpl
def tuneforge_commands():
    return [CommandSpec(name="chat", description="chat with a model in the terminal (--query answers once)",
                        register=register, run=run)]
