"""The ``starnet`` command: one entry point, one sub-command module per room.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds
its sub-commands and sets ``func`` (``Callable[[argparse.Namespace], int]``) on
each. ``main`` loads settings once and passes them down explicitly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from flows.settings import SettingsError, load_settings

# module -> the sub-commands it registers (kept true by a test): a module whose
# third-party packages are missing (a bare GPU box for training has torch but no
# SQLAlchemy or Prefect) still lists its commands, which then say what is missing
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "flows.cli_transform": ("transform", "test"),
    "flows.cli_train": ("train", "plot", "soup"),
    "flows.cli_db": ("db", "history", "runs", "model"),
    "flows.cli_pipeline": ("watch", "serve", "run", "demo", "nightly", "retrain"),
}

DESCRIPTION = """\
starnet removes stars from astro images with a neural network and leaves the
background: nebulosity, dust, small galaxies.

Single images:   starnet transform image.tif     -> image_starless.tif, image_mask.tif
Observatory:     starnet watch                    -> processes every frame dropped in incoming/
History:         starnet history FILE             -> what made this file, from the provenance DB

Settings come from config.yaml (or --config / $STARNET_CONFIG).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="starnet",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", help="settings file (default: $STARNET_CONFIG or ./config.yaml)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, commands in COMMAND_MODULES.items():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or e.name.split(".")[0] in ("flows", "starnet_core"):
                raise  # our own code is broken: not a missing optional package
            for command in commands:
                _register_unavailable(sub, command, e.name)
            continue
        module.register(sub)
    return parser


def _register_unavailable(sub: Any, command: str, package: str) -> None:
    p = sub.add_parser(command, help=f"(unavailable here: needs {package})", add_help=False)

    def unavailable(args: argparse.Namespace) -> int:
        print(
            f"starnet {command}: needs the Python package {package!r}, which is not "
            "installed here (pip install -e . installs every dependency)",
            file=sys.stderr,
        )
        return 2

    p.set_defaults(func=unavailable, unavailable=True)  # takes any arguments


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "unavailable", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # our own notes (alpha dropped, NaN replaced, resumed at step N) at INFO;
    # third-party chatter (alembic, httpx) only with --verbose
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for name in ("starnet", "starnet_core", "flows"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        args.settings = load_settings(args.config)
    except SettingsError as e:
        print(f"starnet: {e}", file=sys.stderr)
        return 2
    try:
        rc = int(args.func(args))
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (`starnet runs | head`): stop quietly, as Unix tools do;
        # stdout goes to devnull so the interpreter's last flush cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except _IO_ERRORS + _database_errors() as e:
        # a folder that cannot be made, a database file that is not one, a server down:
        # one line naming it (--verbose: the whole traceback)
        if args.verbose:
            raise
        print(
            f"starnet {args.command}: {_one_line(e, args.settings.database_url)}", file=sys.stderr
        )
        return 1
    return rc


_IO_ERRORS: tuple[type[Exception], ...] = (OSError,)


def _database_errors() -> tuple[type[Exception], ...]:
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:  # a bare GPU image: training needs no database
        return ()
    return (SQLAlchemyError,)


def _one_line(e: BaseException, database_url: str) -> str:
    """An I/O or database error as one line; a database error names the database."""
    if isinstance(e, OSError):
        return str(e)
    from flows.db_engine import safe_url

    cause = getattr(e, "orig", None) or e  # the driver's own message, without SQL and links
    return f"provenance database {safe_url(database_url)}: {str(cause).splitlines()[0]}"


if __name__ == "__main__":
    sys.exit(main())
