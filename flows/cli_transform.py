"""``starnet transform`` and ``starnet test``: the single astrophotographer's commands.

``starnet transform image.tif`` writes ``image_starless.tif`` and
``image_mask.tif`` next to the input (the original StarNet's names), plus
``image_stars.tif`` / ``image_enhanced.tif`` with ``--stars`` / ``--enhance``.
Every run is recorded in the provenance DB unless ``--no-db``; an input the DB
has already is processed again as a new attempt of its run, and its new outputs
are the recorded ones. An existing file is replaced only when it is the input's
own output (recorded, or stamped by starnet with the input's sha256) or with
``--overwrite``: the user's own ``image_starless.tif`` is never lost by accident.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

TRANSFORM_HELP = """\
Remove the stars from each INPUT (FITS, TIFF, PNG, JPEG) and write, next to it
(or in --out):
  <stem>_starless<ext>   the image without stars
  <stem>_mask<ext>       where the stars were (1 = star), feathered
  <stem>_stars<ext>      the star layer              (with --stars)
  <stem>_enhanced<ext>   nebulosity boosted, stars not (with --enhance)
Linear data (FITS, float TIFF) is auto-stretched for the network and the
starless result returned to linear; 8/16-bit images are used as they are.
Outputs keep the input's format and bit depth; <stem>_preview is always JPEG
(a FITS frame shown as FITS viewers show it: row 0 at the bottom, unless
ROWORDER = 'TOP-DOWN'; the FITS outputs keep the input's row order).
An existing file is replaced only when it is this input's own output (recorded
in the provenance DB, or stamped by starnet with this input's sha256 in its
header / metadata, as a --no-db run leaves it); any other file (your own
M42_starless.tif, another input's outputs) fails that input before anything of
it is written: use --overwrite to replace such files, --out to write elsewhere,
or move them away. Even with --overwrite, an input never overwrites the
command's inputs or the outputs another input of the same command wrote (e.fits
and e.fits.gz, or M42.fits and M42.tif, into one folder): rename it or use
--out. A frame's outputs are written all or none. The exit code is non-zero if
any input failed or was not processed (another run of it in progress); the
others are still processed.

examples:
  starnet transform M42.tif
  starnet transform night1/*.fits --out starless/ --stars --enhance
  starnet transform busy_field.tif --passes 2 --tile 512
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "transform",
        help="remove stars from images: X -> X_starless, X_mask",
        description=TRANSFORM_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files")
    p.add_argument("--out", help="output folder (default: next to each input)")
    _add_engine_options(p)
    p.add_argument("--stars", action="store_true", help="also write <stem>_stars")
    p.add_argument("--enhance", action="store_true", help="also write <stem>_enhanced")
    p.add_argument("--preview", action="store_true", help="also write <stem>_preview.jpg")
    p.add_argument("--no-db", action="store_true", help="do not record in the provenance DB")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing files at the output names even when they are not this "
        "input's own outputs (never the command's inputs)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_transform)

    t = sub.add_parser(
        "test",
        help="write showcase panels (original | starless | mask) of a few patches to ./test",
        description="Quick look at what the model does on an image: a few 256 px patches "
        "(the brightest-star, the busiest and a random one) as side-by-side PNG panels. "
        "A FITS frame is shown as FITS viewers show it: row 0 at the bottom (unless its "
        "header says ROWORDER = 'TOP-DOWN'). A panel's name ends in the 0-based row and "
        "column of the patch's first pixel (of a FITS frame: its lower-left corner).",
    )
    t.add_argument("input", help="image file")
    t.add_argument("--out", default="test", help="folder for the panels (default ./test)")
    t.add_argument("--patches", type=int, default=4, help="number of patches (default 4)")
    t.add_argument("--patch", type=int, default=256, help="patch size in px (default 256)")
    _add_engine_options(t)
    t.set_defaults(func=cmd_test)


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and tiling (defaults from config.yaml)")
    g.add_argument("--weights", help="weights file (.safetensors); default: the packaged model")
    g.add_argument("--tile", type=int, help="tile size in px")
    g.add_argument("--overlap", type=int, help="tile overlap in px")
    g.add_argument("--batch", type=int, help="tiles per batch")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument("--passes", type=int, help="run the network N times (busy fields: 2)")
    g.add_argument("--upsample", action="store_true", help="2x upsample for tiny stars")
    g.add_argument(
        "--ensemble",
        type=int,
        choices=(1, 2, 4, 8),
        help="average the network over N flips of each tile (N x slower, a little cleaner)",
    )
    g.add_argument(
        "--large-stars",
        action="store_true",
        help="run the network again at half resolution and take the big bright stars it "
        "leaves as blobs (a quarter more time; can take galaxies in dense star fields; "
        "large_stars.enabled: true)",
    )
    g.add_argument(
        "--lattice",
        type=int,
        metavar="PX",
        help="take out the faint pattern fixed to the pixel grid that the network leaves, "
        "of this period (4 for the shipped model; inference.lattice_px, 0: off)",
    )
    post = p.add_argument_group("after the network (defaults from config.yaml)")
    post.add_argument(
        "--no-protect",
        action="store_true",
        help="take the network's output everywhere, not only where it finds stars "
        "(protect.enabled: false)",
    )
    post.add_argument(
        "--no-sky-colour",
        action="store_true",
        help="keep the network's own colour where stars were, not the nearby sky's "
        "(sky_colour.enabled: false)",
    )
    post.add_argument(
        "--no-core-fill",
        action="store_true",
        help="keep the network's own fill of burnt-out stars, not one from the starless sky "
        "around them (core_fill.enabled: false)",
    )
    post.add_argument(
        "--no-spikes",
        action="store_true",
        help="keep the diffraction spikes the network leaves, not lowered to the sky beside "
        "them (spikes.enabled: false)",
    )
    post.add_argument(
        "--no-remnants",
        action="store_true",
        help="keep what the network leaves of the stars inside their footprints, not "
        "smoothed away (remnants.enabled: false)",
    )


def _apply_overrides(args: argparse.Namespace) -> None:
    inf = args.settings.inference
    for attr, name in (
        ("weights", "weights"),
        ("tile", "tile_px"),
        ("overlap", "overlap_px"),
        ("batch", "batch_size"),
        ("device", "device"),
        ("passes", "passes"),
        ("ensemble", "ensemble"),
        ("lattice", "lattice_px"),
    ):
        value = getattr(args, attr, None)
        if value is not None:
            setattr(inf, name, value)
    if getattr(args, "upsample", False):
        inf.upsample = True
    if getattr(args, "large_stars", False):
        args.settings.large_stars = dataclasses.replace(args.settings.large_stars, enabled=True)
    if getattr(args, "no_protect", False):
        args.settings.protect = dataclasses.replace(args.settings.protect, enabled=False)
    if getattr(args, "no_sky_colour", False):
        args.settings.sky_colour = dataclasses.replace(args.settings.sky_colour, enabled=False)
    if getattr(args, "no_core_fill", False):
        args.settings.core_fill = dataclasses.replace(args.settings.core_fill, enabled=False)
    if getattr(args, "no_spikes", False):
        args.settings.spikes = dataclasses.replace(args.settings.spikes, enabled=False)
    if getattr(args, "no_remnants", False):
        args.settings.remnants = dataclasses.replace(args.settings.remnants, enabled=False)


class ProgressBar:
    """A one-line progress bar on stderr (only when stderr is a terminal)."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled and sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.open = False  # a bar line is shown and not ended yet

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + "-" * (width - filled)
        dt = time.perf_counter() - self.t0
        sys.stderr.write(f"\r{self.label} [{bar}] {done}/{total} tiles {dt:5.1f}s")
        self.open = done < total
        if not self.open:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def end(self) -> None:
        """End the bar's line (a frame that failed half-way), so the next line starts clean."""
        if self.open:
            sys.stderr.write("\n")
            self.open = False


def _engine_or_exit(args: argparse.Namespace) -> Any:
    from flows.frame import load_engine
    from flows.settings import tile_options

    try:
        # the config's values were checked when it was read; the command line's overrides
        # (--passes, --lattice, --tile, ...) are checked here, once, before any frame
        tile_options(args.settings)
    except ValueError as e:
        print(f"starnet: bad engine option: {e}", file=sys.stderr)
        return None
    try:
        return load_engine(args.settings)
    except (FileNotFoundError, ValueError) as e:
        print(f"starnet: cannot load the model: {e}", file=sys.stderr)
        return None


def cmd_transform(args: argparse.Namespace) -> int:
    from flows.frame import OutputGuard, model_record, process_file
    from flows.provenance import ProvenanceDB

    _apply_overrides(args)
    s = args.settings
    s.outputs = dataclasses.replace(
        s.outputs, stars=args.stars, enhanced=args.enhance, preview=args.preview
    )
    engine = _engine_or_exit(args)
    if engine is None:
        return 2
    db = None if args.no_db else ProvenanceDB.from_settings(s)
    if db is not None:  # once per command (the flows do it in load_run_engine): a model
        # first met here (--weights X) is recorded with its file, so that `starnet model
        # promote` of it gives the pipeline something to run
        db.register_model(engine.version, engine.weights_sha256, model_record(engine))
    failures = 0
    # no input of this command overwrites another input or its outputs, nor (unless
    # --overwrite) a file that is not its own output, e.g. the user's hand-made starless
    guard = OutputGuard("any" if args.overwrite else "own")
    guard.protect_inputs(args.inputs)
    for name in args.inputs:
        bar = ProgressBar(Path(name).name, enabled=not args.quiet)
        t0 = time.perf_counter()
        result = process_file(
            name, s, engine, out_dir=args.out, db=db, guard=guard, skip_done=False, progress=bar
        )  # a frame that fails (bad input, out of memory, ...) is a result: go on
        bar.end()
        if result.status != "succeeded":  # failed, or busy / exhausted: not processed
            failures += 1
            print(f"FAILED {result.error or f'{name}: not processed ({result.status})'}",
                  file=sys.stderr)  # fmt: skip
            continue
        outs = ", ".join(Path(p).name for k, p in result.outputs.items())
        print(f"{name}: {outs} ({time.perf_counter() - t0:.1f} s)")
    if failures:
        print(f"{failures} of {len(args.inputs)} input(s) failed", file=sys.stderr)
    return 1 if failures else 0


def _pick_patches(stretched: np.ndarray, count: int, size_px: int) -> list[tuple[int, int]]:
    """Top-left corners of ``count`` patches: around the brightest pixel, then the busiest
    patch (the most fine detail, i.e. stars: mean |luminance - its 5 px box mean|, on a
    grid of half-patch steps), then random ones (seeded: a rerun shows the same).

    The corners are distinct, so fewer than ``count`` when fewer patches fit: an image
    no larger than the patch has one, and four identical panels would only say the same
    thing four times (and take four times as long)."""
    _, h, w = stretched.shape
    lum = stretched.mean(0)
    size_px = min(size_px, h, w)
    count = min(count, (h - size_px + 1) * (w - size_px + 1))
    corners: list[tuple[int, int]] = []

    def clamp(y: int, x: int) -> tuple[int, int]:
        return min(max(0, y - size_px // 2), h - size_px), min(
            max(0, x - size_px // 2), w - size_px
        )

    y, x = np.unravel_index(int(np.argmax(lum)), lum.shape)
    corners.append(clamp(int(y), int(x)))
    if count > 1:
        step = max(1, size_px // 2)
        grid = [
            (gy, gx)
            for gy in sorted({*range(0, h - size_px + 1, step), h - size_px})
            for gx in sorted({*range(0, w - size_px + 1, step), w - size_px})
            if (gy, gx) != corners[0]
        ]
        if grid:
            from scipy import ndimage

            detail = np.abs(lum - ndimage.uniform_filter(lum, 5, mode="nearest"))
            busy = [float(detail[gy : gy + size_px, gx : gx + size_px].mean()) for gy, gx in grid]
            corners.append(grid[int(np.argmax(busy))])
    rng = np.random.default_rng(0)
    while len(corners) < count:  # ends: count is at most the number of distinct corners
        corner = (int(rng.integers(0, h - size_px + 1)), int(rng.integers(0, w - size_px + 1)))
        if corner not in corners:
            corners.append(corner)
    return corners[:count]


def cmd_test(args: argparse.Namespace) -> int:
    from PIL import Image

    from flows.frame import rows_bottom_up
    from flows.settings import pipeline_options
    from starnet_core.imageio import ImageError, read_image
    from starnet_core.pipeline import StretchOptions, process_array, stretch_for_network

    _apply_overrides(args)
    engine = _engine_or_exit(args)
    if engine is None:
        return 2
    for option, value, least in (("--patches", args.patches, 1), ("--patch", args.patch, 16)):
        if value < least:
            print(f"starnet test: {option} must be at least {least}, got {value}", file=sys.stderr)
            return 2
    validation = args.settings.validation
    try:
        img = read_image(
            args.input,
            nan_policy=validation.nan_policy,
            max_nonfinite_fraction=validation.max_nonfinite_fraction,
        )
    except ImageError as e:
        print(f"FAILED {e}", file=sys.stderr)
        return 1

    # stretch the whole frame once, so every patch shows as in the full result
    options = pipeline_options(args.settings)
    try:
        data, _, _, _ = stretch_for_network(img.data, img.is_linear, options["stretch"])
    except ValueError as e:  # data outside [0, 1] that stretch.mode never would clip
        print(f"FAILED {args.input}: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file, or a path under one; not allowed
        reason = "not a folder" if out.exists() else (e.strerror or str(e))
        print(f"FAILED {out}: cannot write the patches here: {reason}", file=sys.stderr)
        return 1
    stem = Path(args.input).name.split(".")[0]
    size = min(args.patch, data.shape[1], data.shape[2])
    corners = _pick_patches(data, args.patches, size)
    bottom_up = rows_bottom_up(img)
    if len(corners) < args.patches:
        print(f"{args.input}: only {len(corners)} distinct {size} px patch(es) fit in the image")
    for i, (y, x) in enumerate(corners):
        patch = np.ascontiguousarray(data[:, y : y + size, x : x + size])
        products = process_array(
            engine.model,
            patch,
            is_linear=False,
            **(options | {"stretch": StretchOptions(mode="never")}),
        )
        panels = [patch, products.starless_stretched, products.mask]
        rgb = [np.repeat(a, 3, 0) if a.shape[0] == 1 else a for a in panels]
        strip = np.concatenate(rgb, axis=2).transpose(1, 2, 0)
        if bottom_up:  # a FITS frame: shown as FITS viewers show it, row 0 at the bottom
            strip = strip[::-1]
        path = out / f"{stem}_patch{i}_{y}_{x}.png"
        try:
            Image.fromarray((np.clip(strip, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)
        except OSError as e:
            print(f"FAILED {path}: cannot write: {e.strerror or e}", file=sys.stderr)
            return 1
        print(f"wrote {path}")
    return 0
