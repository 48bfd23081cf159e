"""``packft <command>``: one entry point; each command lives in its own module.

A command module exposes ``add_arguments(parser)`` and ``run(args) -> int``. :data:`COMMANDS`
names them by string and they are imported only when their command runs, so ``packft
preprocess`` never pays for importing torch and this dispatcher depends on no stage of the
pipeline (tests/test_architecture.py checks both).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import typing

from packft import __version__
from packft.core.errors import ConfigError, PackftError

COMMANDS: dict[str, tuple[str, str]] = {
    "preprocess": (
        "packft.preprocess.cli",
        "tokenize, pack and write MindSpeed/Megatron SFT datasets",
    ),
    "inspect": ("packft.dataset.inspect", "print a packed dataset's stats and decode rows"),
    "convert-ckpt": (
        "packft.ckpt.convert",
        "convert checkpoints between Hugging Face and Megatron-mcore",
    ),
    "train": ("packft.train.cli", "fine-tune a causal LM on a packed dataset"),
    "track-import": (
        "packft.train.history",
        "replay a train --save directory (train_log.jsonl ...) into a new MLflow run",
    ),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``prog: error: ...``) and exit 2, like the
    other user errors; ``--help`` still prints the full usage."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser(command: str | None) -> argparse.ArgumentParser:
    parser = OneLineParser(prog="packft", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"packft {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, summary) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=summary, description=summary)
        if name == command:
            importlib.import_module(module_name).add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # torch_npu hooks into `import torch` and raises on hosts without CANN; packft.train.device
    # imports it explicitly and treats failure as "no NPU" (see README, "Devices").
    os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        module = importlib.import_module(COMMANDS[args.command][0])
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - the user sees one line; PACKFT_DEBUG=1 the traceback
        if os.environ.get("PACKFT_DEBUG"):
            raise
        return report_error(args.command, error)


def report_error(command: str, error: Exception, prog: str = "packft") -> int:
    """Print ``packft COMMAND: error: ...`` (one line; a config's problems joined by ``;``)
    and return the exit code (2 for usage and config errors, 1 for the rest)."""
    from packft.core.errors import exit_code, one_line

    known = isinstance(error, PackftError | ConfigError | ValueError | OSError | LookupError)
    text = one_line(error)
    if not known:  # a bug, not a user error: still one line, with the way to the traceback
        text = f"internal error {type(error).__name__}: {text} (PACKFT_DEBUG=1 shows the traceback)"
    where = f"{prog} {command}" if command else prog
    print(f"{where}: error: {text}", file=sys.stderr)
    return exit_code(error)


if __name__ == "__main__":
    sys.exit(main())
