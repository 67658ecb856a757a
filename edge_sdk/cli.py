"""`hybrid-vision` command line.

Each subcommand lives in its own module with ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``. Command modules import their heavy dependencies only
inside ``run``, so ``--help`` and the edge commands work on a device that has
only the ``edge`` extra. The table names modules by string: the edge SDK never
imports ``cloud`` or ``quantize``; the command line merely dispatches to them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any

from .nativelog import quiet_native_logs

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, extra that provides its dependencies)
    "train": ("quantize.commands.train", "quantize"),
    "import": ("quantize.commands.import_model", "quantize"),
    "quantize": ("quantize.commands.quantize", "quantize"),
    "evaluate": ("quantize.commands.evaluate", "quantize"),
    "demo": ("quantize.commands.demo", "all"),
    "serve": ("cloud.commands.serve", "cloud"),
    "predict": ("edge_sdk.commands.predict", "edge"),
}


class _Unavailable:
    """Stands in for a command whose module cannot be imported here."""

    def __init__(self, err: ModuleNotFoundError) -> None:
        self.err = err
        self.HELP = f"(unavailable here: needs '{err.name}')"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("rest", nargs=argparse.REMAINDER)

    def run(self, args: argparse.Namespace) -> int:
        raise self.err


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser, one sub-command per installed command module (nothing heavy is imported).

    Returns:
        The parser; each sub-command's namespace carries its module as ``_module``.
    """
    parser = argparse.ArgumentParser(
        prog="hybrid-vision",
        description="Edge-plus-cloud image recognition: train, quantize to int8, serve, and predict.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and TensorFlow's and LiteRT's own log lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (modname, _extra) in COMMANDS.items():
        mod: Any
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name and modname.startswith(e.name):  # the command's own package is absent
                continue
            mod = _Unavailable(e)  # a dependency is missing: say so when the command runs
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_module=mod, _extra=_extra)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``hybrid-vision``.

    Args:
        argv: the arguments (default: sys.argv[1:]).

    Returns:
        The exit status: 0, 1 (a HybridVisionError), 2 (usage), 3 (a missing extra), 130 (interrupted).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        quiet_native_logs()  # before any command loads TensorFlow or LiteRT
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from .errors import HybridVisionError

    try:
        return int(args._module.run(args) or 0)
    except ModuleNotFoundError as e:
        print(
            f"hybrid-vision {args.command}: needs '{e.name}', which is not installed.\n"
            f"  pip install 'hybrid-vision[{args._extra}]'",
            file=sys.stderr,
        )
        return 3
    except HybridVisionError as e:
        print(f"hybrid-vision {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hybrid-vision {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
