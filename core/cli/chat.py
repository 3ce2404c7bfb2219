"""`tuneforge chat CONFIG`: talk to a model (plus adapter) in the terminal, or answer one --query."""

from __future__ import annotations

import sys


def register(sub, name):
    p = sub.add_parser(name, help="chat with a model in the terminal (--query answers once)")
    p.add_argument("config", help="YAML config (model_name_or_path, adapter_name_or_path, template, ...)")
    p.add_argument("--query", help="answer this one message and exit")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..plan import prepare

    prepared = prepare(args.config, args.overrides, blocked=args.disable_plugin)
    from ..chat.engine import ChatEngine

    engine = ChatEngine(prepared)
    if args.query is not None:
        for piece in engine.stream([{"role": "user", "content": args.query}]):
            print(piece, end="", flush=True)
        print()
        return 0
    print("type a message; 'clear' resets the history, 'exit' quits")
    history: list[dict] = []
    while True:
        try:
            query = input("\nUser: ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if query.strip() == "exit":
            return 0
        if query.strip() == "clear":
            history = []
            print("history cleared")
            continue
        history.append({"role": "user", "content": query})
        print("Assistant: ", end="", flush=True)
        reply = ""
        for piece in engine.stream(history):
            reply += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        print()
        history.append({"role": "assistant", "content": reply})
