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

from flows.provenance_records import ProvenanceError
from flows.settings import Settings, SettingsError, load_settings

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
    except _IO_ERRORS + _database_errors() + (ProvenanceError, ModuleNotFoundError) as e:
        # a folder that cannot be made, a database file that is not one, a server down, a
        # schema newer than this starnet, the database's driver not installed: one line
        # naming it (--verbose: the whole traceback)
        if args.verbose or (isinstance(e, ModuleNotFoundError) and e.name not in DB_DRIVERS):
            raise  # a package other than a database driver missing: not the database's
        line = _one_line(e, args.settings.database_url, url_setting(args.settings))
        print(f"starnet {args.command}: {line}", file=sys.stderr)
        return 1
    return rc


_IO_ERRORS: tuple[type[Exception], ...] = (OSError,)


def _database_errors() -> tuple[type[Exception], ...]:
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:  # a bare GPU image: training needs no database
        return ()
    return (SQLAlchemyError,)


# the Python packages SQLAlchemy imports for a database URL's driver -> how to install them
DB_DRIVERS: dict[str, str] = {
    "psycopg2": "pip install '.[postgres]' (psycopg2-binary) in starnet's checkout",
    "psycopg": "pip install 'psycopg[binary]', or use postgresql+psycopg2:// with "
    "pip install '.[postgres]'",
    "pg8000": "pip install pg8000, or use postgresql+psycopg2:// with pip install '.[postgres]'",
}


def url_setting(settings: Settings) -> str:
    """The setting the provenance database's URL came from, for messages."""
    if os.environ.get("STARNET_DATABASE_URL"):
        return "STARNET_DATABASE_URL"
    if settings.database.url:
        return "database.url"
    return "database.url (unset: provenance.db in data_dir)"


def _shown_url(database_url: str) -> str:
    """The URL without its password (imported here: SQLAlchemy only when there is an error)."""
    from flows.db_engine import safe_url

    return safe_url(database_url)


def _one_line(e: BaseException, database_url: str, setting: str = "database.url") -> str:
    """An I/O or database error as one line; a database error names the database, and one
    about the database as a whole (its driver, its URL, its schema) the ``setting`` that
    names it, and the fix."""
    if isinstance(e, OSError):
        return str(e)
    url = _shown_url(database_url)
    if isinstance(e, ModuleNotFoundError):
        return (
            f"{setting} is {url}, whose driver {e.name} is not installed in this Python "
            f"({sys.prefix}): {DB_DRIVERS.get(e.name or '', 'install it')}"
        )
    if isinstance(e, ProvenanceError):
        message = str(e).splitlines()[0]
        # "database URL: schema revision ... is newer ...", "database url ...: unsupported"
        return f"{setting}: {message}" if message.lower().startswith("database ") else message
    if type(e).__name__ == "ArgumentError":  # SQLAlchemy cannot read the URL at all
        return f"{setting} is {url!r}: {str(e).splitlines()[0]}"
    cause = getattr(e, "orig", None) or e  # the driver's own message, without SQL and links
    return f"provenance database {url}: {str(cause).splitlines()[0]}"


if __name__ == "__main__":
    sys.exit(main())
