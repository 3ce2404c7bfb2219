"""`tuneforge version`."""

from .. import __version__


def register(sub, name):
    p = sub.add_parser(name, help="print the tuneforge version")
    p.set_defaults(handler=run)


def run(args) -> int:
    print(f"tuneforge {__version__}")
    return 0
