"""The ``starnet`` command: one entry point, one sub-command module per room.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds
its sub-commands and sets ``func`` (``Callable[[argparse.Namespace], int]``) on
each. ``main`` loads settings once and passes them down explicitly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from flows.settings import SettingsError, load_settings

COMMAND_MODULES: tuple[str, ...] = (
    "flows.cli_transform",
    "flows.cli_train",
    "flows.cli_db",
    "flows.cli_pipeline",
)

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
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
