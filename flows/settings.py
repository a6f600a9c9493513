"""One typed settings object, read from ``config.yaml`` in one place.

Every tunable lives in a dataclass below with its default; ``config.yaml`` at
the repository root mirrors these defaults (a test keeps the two equal). A key
that is not a field is an error naming the key and the file, so a typo never
silently falls back to a default.

Lookup order for the file: the ``path`` argument, ``$STARNET_CONFIG``,
``./config.yaml``; with none of them present the defaults are used.
Environment overrides: ``STARNET_DATA_DIR`` (``data_dir``) and
``STARNET_DATABASE_URL`` (``database.url``) — credentials never live in the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from starnet_core.options import (
    CoreFillOptions,
    LargeStarOptions,
    MaskOptions,
    ProtectOptions,
    RemnantOptions,
    SkyColourOptions,
    SpikeOptions,
    StretchOptions,
    TileOptions,
)

# The science defaults live once, in starnet_core's option classes; the settings
# sections below take their defaults from them.
_TILE, _MASK, _STRETCH = TileOptions(), MaskOptions(), StretchOptions()
_PROTECT = ProtectOptions()
_SKY_COLOUR = SkyColourOptions()
_CORE_FILL = CoreFillOptions()
_SPIKES = SpikeOptions()
_REMNANTS = RemnantOptions()
_LARGE_STARS = LargeStarOptions()


class SettingsError(ValueError):
    """A configuration file is unreadable or holds an unknown key or a bad value."""


# The choices of the settings that name one of a few policies, checked when the file is read
# (the science's own choices, e.g. stretch.mode, are checked by its option classes).
PROMOTE_POLICIES = ("better", "always", "never")  # retrain.promote
SUBMIT_MODES = ("auto", "local", "deployment")  # prefect.submit


@dataclass
class InferenceSettings:
    """Tiled star removal (see ``starnet_core.tiling``)."""

    weights: str | None = None  # None: the model shipped in the package
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    tile_px: int = _TILE.tile_px
    overlap_px: int = _TILE.overlap_px
    batch_size: int = _TILE.batch_size
    passes: int = _TILE.passes
    upsample: bool = _TILE.upsample
    ensemble: int = _TILE.ensemble  # 1 | 2 | 4 | 8: average over flips (costs that many x)
    mixed_precision: bool = _TILE.mixed_precision
    lattice_px: int = _TILE.lattice_px  # the network's grid pattern taken out, period (0: off)


@dataclass
class StretchSettings:
    """Auto-stretch with the midtones transfer function (see ``starnet_core.stretch``)."""

    mode: str = _STRETCH.mode  # auto: stretch linear inputs only | always | never
    shadows_clip_mad: float = _STRETCH.shadows_clip_mad
    target_background: float = _STRETCH.target_background
    linked: bool = _STRETCH.linked


@dataclass
class ValidationSettings:
    """Checks on every input frame before anything is computed."""

    nan_policy: str = "error"  # error | zero | median (starnet_core.imageio.NAN_POLICIES)
    max_nonfinite_fraction: float = 0.01


@dataclass
class MaskSettings:
    """Star mask from the star layer (see ``starnet_core.masks``)."""

    threshold: float = _MASK.threshold
    dilate_px: int = _MASK.dilate_px
    feather_px: float = _MASK.feather_px
    noise_sigmas: float = _MASK.noise_sigmas  # >= median + N robust sigmas of the layer (0: off)
    signal_sigmas: float = _MASK.signal_sigmas  # smoothed layer >= N x the image's pixel noise


@dataclass
class ProtectSettings:
    """Background protection: keep the input where the net's star layer finds no star."""

    enabled: bool = _PROTECT.enabled
    threshold: float = _PROTECT.threshold
    dilate_px: int = _PROTECT.dilate_px
    feather_px: float = _PROTECT.feather_px
    signal_sigmas: float = _PROTECT.signal_sigmas  # also keep the input where not significant


@dataclass
class SkyColourSettings:
    """The sky's colour where stars were: keep the net's brightness on clipped cores and
    star-dominated pixels, take the colour from the nearest sky (see SkyColourOptions)."""

    enabled: bool = _SKY_COLOUR.enabled
    clip_level: float = _SKY_COLOUR.clip_level  # clipped: every channel >= this (stretched)
    dilate_px: int = _SKY_COLOUR.dilate_px
    feather_px: float = _SKY_COLOUR.feather_px
    star_share_low: float = _SKY_COLOUR.star_share_low  # star's share of the light: ramp
    star_share_high: float = _SKY_COLOUR.star_share_high  # from 0 here to 1 here
    sky_threshold: float = _SKY_COLOUR.sky_threshold  # sky: star layer below this


@dataclass
class CoreFillSettings:
    """Burnt-out stars filled from the starless sky around them, where the net's own
    fill leaves a glow (see CoreFillOptions)."""

    enabled: bool = _CORE_FILL.enabled
    clip_level: float = _CORE_FILL.clip_level  # core: every channel >= this (stretched)
    core_drop: float = _CORE_FILL.core_drop  # a core the net took at least this much from
    layer_threshold: float = _CORE_FILL.layer_threshold  # footprint: star layer above this
    reach: float = _CORE_FILL.reach  # ... within this many core radii
    reach_px: int = _CORE_FILL.reach_px  # ... plus this many px of the core
    grow_px: int = _CORE_FILL.grow_px  # then grown by this
    grain: bool = _CORE_FILL.grain  # noise at the image's own grain added to the fill


@dataclass
class SpikeSettings:
    """Diffraction spikes the net left, taken out along each star's arms at the frame's
    one spike angle (see SpikeOptions)."""

    enabled: bool = _SPIKES.enabled
    min_score: float = _SPIKES.min_score  # the frame's spike angle must stand out this much
    star_threshold: float = _SPIKES.star_threshold  # stars: star layer above this
    max_stars: int = _SPIKES.max_stars  # brightest stars the angle is measured on
    ray_px: int = _SPIKES.ray_px  # rays sampled this far beyond each core
    detect_sigma: float = _SPIKES.detect_sigma  # line excess above this many sigmas ...
    line_ratio: float = _SPIKES.line_ratio  # ... and this many times the excess across
    min_arm_px: int = _SPIKES.min_arm_px  # arms reach this far beyond the core, both sides
    gap_px: int = _SPIKES.gap_px  # gaps along an arm bridged
    core_threshold: float = _SPIKES.core_threshold  # arms lowered up to the star's core


@dataclass
class RemnantSettings:
    """What the net leaves of the stars inside their footprints, smoothed away (see
    RemnantOptions)."""

    enabled: bool = _REMNANTS.enabled
    threshold: float = _REMNANTS.threshold  # footprints: star layer above this
    sigma_px: float = _REMNANTS.sigma_px  # blurred by a Gaussian of this sigma
    dilate_px: int = _REMNANTS.dilate_px  # footprints grown by this
    feather_px: float = _REMNANTS.feather_px  # and their edge feathered


@dataclass
class LargeStarSettings:
    """Stars too large for the network, taken at half resolution (see LargeStarOptions)."""

    enabled: bool = _LARGE_STARS.enabled
    signal_sigmas: float = _LARGE_STARS.signal_sigmas  # full-res above half-res by this
    min_area_px: int = _LARGE_STARS.min_area_px  # over at least this many px
    core_level: float = _LARGE_STARS.core_level  # holding an input pixel this bright
    ring_sigmas: float = _LARGE_STARS.ring_sigmas  # with a star's halo taken around it
    grow_px: int = _LARGE_STARS.grow_px  # never below the sky from around, grown by this


@dataclass
class EnhanceSettings:
    """Screen-mask-invert nebula enhancement."""

    strength: float = 1.0


@dataclass
class OutputSettings:
    """Which files each processed frame produces (starless and mask always)."""

    stars: bool = True
    enhanced: bool = True
    preview: bool = True


@dataclass
class DatabaseSettings:
    """Provenance database. ``url`` None: SQLite file ``provenance.db`` in ``data_dir``."""

    url: str | None = None
    busy_timeout_s: float = 30.0
    stale_run_s: float = 7200.0  # a run "running" this long without a heartbeat may be re-claimed


@dataclass
class PrefectSettings:
    """How the flows run under Prefect (see ``flows/pipeline.py`` and ``deploy/``)."""

    # global concurrency limit held for each frame's compute; "starnet-gpu-{host}": one per machine
    gpu_limit_name: str = "starnet-gpu"
    gpu_slots: int = 1  # frames computed at once (per limit, i.e. per GPU)
    retrain_limit_name: str = "starnet-retrain"  # one retrain at a time
    serve_limit: int = 2  # concurrent runs of ``starnet serve``
    nightly_cron: str = "0 3 * * *"
    timezone: str = "UTC"
    max_attempts: int = 3  # a failed frame is retried (nightly) until this many attempts
    submit: str = "auto"  # watcher: auto (deployment if an API URL is set) | local | deployment
    process_deployment: str = "process-frame/starnet-process-frame"
    # flows run the promoted model from the DB; one whose file is not here stops them (unless
    # inference.weights is the same model); false: inference.weights, whatever is promoted
    follow_promoted: bool = True
    thumbnail_px: int = 120  # height of the run's preview artifact: ~7 KB in Prefect's DB per frame


def image_patterns() -> list[str]:
    """A glob for every file name ``starnet_core.imageio`` reads by its extension
    (:func:`starnet_core.imageio.readable_suffixes`), so the two never drift."""
    from starnet_core.imageio import readable_suffixes

    return [f"*{suffix}" for suffix in readable_suffixes()]


@dataclass
class WatchSettings:
    """The folder watcher (``starnet watch``)."""

    stable_s: float = 2.0  # a file counts once its size and mtime stayed put this long
    # ... and a FITS file shorter than its headers say (a copy stalled) waits for the rest
    # up to this long after its last change, then is handed on (and fails as truncated)
    incomplete_wait_s: float = 600.0
    poll_s: float = 0.5
    patterns: list[str] = field(default_factory=image_patterns)  # what imageio reads
    retrain_after_pairs: int = 1  # local mode: run retrain after this many new training pairs


@dataclass
class RetrainSettings:
    """Fine-tuning the promoted model on the registered training pairs (``retrain`` flow)."""

    steps: int = 300
    batch_size: int = 4
    crop_px: int = 128
    lr: float = 1e-4
    real_ratio: float = 0.75  # share of each batch cut from training pairs (rest synthetic)
    pool_size: int = 64  # synthetic crops held in memory
    threads: int = 1  # torch CPU threads (0: torch default)
    # where the fine-tune and its evaluation run: None follows inference.device (a GPU when
    # the frames use one; the run then holds the GPU slot); "cpu" leaves the GPU to the frames
    device: str | None = None
    eval_scenes: int = 8  # held-out synthetic scenes
    eval_size_px: int = 128
    eval_seed: int = 90210  # never a training seed
    validation_dir: str | None = None  # folder with original/ and starless/ (never trained on)
    promote: str = "better"  # better | always | never
    min_gain_db: float = 0.1  # "better": mean PSNR gain over the promoted model
    max_star_flux_rise: float = 0.02  # "better": and residual star flux may not rise more


@dataclass
class Settings:
    """Everything tunable in starnet."""

    data_dir: str = "starnet-data"
    incoming_dir: str = "incoming"  # relative paths are under data_dir
    output_dir: str = "outputs"
    training_dir: str = "training"
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    stretch: StretchSettings = field(default_factory=StretchSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)
    mask: MaskSettings = field(default_factory=MaskSettings)
    protect: ProtectSettings = field(default_factory=ProtectSettings)
    sky_colour: SkyColourSettings = field(default_factory=SkyColourSettings)
    core_fill: CoreFillSettings = field(default_factory=CoreFillSettings)
    spikes: SpikeSettings = field(default_factory=SpikeSettings)
    remnants: RemnantSettings = field(default_factory=RemnantSettings)
    large_stars: LargeStarSettings = field(default_factory=LargeStarSettings)
    enhance: EnhanceSettings = field(default_factory=EnhanceSettings)
    outputs: OutputSettings = field(default_factory=OutputSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    prefect: PrefectSettings = field(default_factory=PrefectSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    retrain: RetrainSettings = field(default_factory=RetrainSettings)

    def resolve(self, rel: str) -> Path:
        """A path from the settings, relative ones taken under ``data_dir``."""
        p = Path(rel).expanduser()
        return p if p.is_absolute() else Path(self.data_dir).expanduser() / p

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(Path(self.data_dir).expanduser() / 'provenance.db').resolve()}"


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise SettingsError(f"{where}: expected a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise SettingsError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in raw.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)  # type: ignore[arg-type]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except SettingsError as e:
                errors.append(str(e))
        raise SettingsError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise SettingsError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        return origin(_coerce(inner, v, where) for v in value)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is Any or (isinstance(tp, type) and isinstance(value, tp)):
        if tp is int and isinstance(value, bool):
            raise SettingsError(f"{where}: expected an integer, got {value!r}")
        return value
    raise SettingsError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def default_config_path() -> Path | None:
    env = os.environ.get("STARNET_CONFIG")
    if env:
        return Path(env)
    local = Path("config.yaml")
    return local if local.exists() else None


def retrain_device(settings: Settings) -> str:
    """The device of the retrain flow's fine-tune and evaluation: ``retrain.device``, or
    ``inference.device`` when that is not set."""
    return settings.retrain.device or settings.inference.device


def tile_options(settings: Settings) -> TileOptions:
    fields = asdict(settings.inference)
    del fields["weights"]  # which model, not how to run it
    return TileOptions(**fields)


def stretch_options(settings: Settings) -> StretchOptions:
    return StretchOptions(**asdict(settings.stretch))


def mask_options(settings: Settings) -> MaskOptions:
    return MaskOptions(**asdict(settings.mask))


def protect_options(settings: Settings) -> ProtectOptions:
    return ProtectOptions(**asdict(settings.protect))


def sky_colour_options(settings: Settings) -> SkyColourOptions:
    return SkyColourOptions(**asdict(settings.sky_colour))


def core_fill_options(settings: Settings) -> CoreFillOptions:
    return CoreFillOptions(**asdict(settings.core_fill))


def spike_options(settings: Settings) -> SpikeOptions:
    return SpikeOptions(**asdict(settings.spikes))


def remnant_options(settings: Settings) -> RemnantOptions:
    return RemnantOptions(**asdict(settings.remnants))


def large_star_options(settings: Settings) -> LargeStarOptions:
    return LargeStarOptions(**asdict(settings.large_stars))


def pipeline_options(settings: Settings) -> dict[str, Any]:
    """Every option group of ``starnet_core.pipeline.process_array``, keyed by its keyword:
    what the pipeline's settings make of one frame, for every entry point that runs it."""
    return {
        "stretch": stretch_options(settings),
        "tiles": tile_options(settings),
        "mask": mask_options(settings),
        "protect": protect_options(settings),
        "sky_colour": sky_colour_options(settings),
        "core_fill": core_fill_options(settings),
        "spikes": spike_options(settings),
        "remnants": remnant_options(settings),
        "large_stars": large_star_options(settings),
    }


def _check_options(settings: Settings, where: str) -> None:
    """Build every option group once, so a bad value is reported with the config file."""
    for section, build in (
        ("inference", tile_options),
        ("stretch", stretch_options),
        ("mask", mask_options),
        ("protect", protect_options),
        ("sky_colour", sky_colour_options),
        ("core_fill", core_fill_options),
        ("spikes", spike_options),
        ("remnants", remnant_options),
        ("large_stars", large_star_options),
    ):
        try:
            build(settings)
        except ValueError as e:
            raise SettingsError(f"{where}.{section}: {e}") from e


def _check_choices(settings: Settings, where: str) -> None:
    """Every setting that names one of a few choices holds one of them, so a typo is reported
    with the config file and the key, never later by each frame or after a whole retrain."""
    from starnet_core.imageio import NAN_POLICIES

    for key, value, allowed in (
        ("validation.nan_policy", settings.validation.nan_policy, NAN_POLICIES),
        ("retrain.promote", settings.retrain.promote, PROMOTE_POLICIES),
        ("prefect.submit", settings.prefect.submit, SUBMIT_MODES),
    ):
        if value not in allowed:
            raise SettingsError(
                f"{where}.{key}: expected one of {', '.join(allowed)}, got {value!r}"
            )


def _finite(value: float) -> bool:
    return isinstance(value, int) or math.isfinite(value)  # an int too big for a float is finite


@dataclass(frozen=True)
class _Range:
    """The valid values of one numeric setting: finite, from ``low`` to ``high`` (None: no
    bound), each bound included unless it is ``open``; ``words`` replaces the range's own
    words where they need a note."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    words: str | None = None

    def holds(self, value: float) -> bool:
        if not _finite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self, integer: bool) -> str:
        if self.words:
            return self.words
        noun = "an integer" if integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{noun} in {left}{self.low:g}, {self.high:g}{right}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        return f"{noun} {'<' if self.high_open else '<='} {self.high:g}"


# The range of every number that no option class of starnet_core checks when it is built
# (``_check_options`` reports theirs), taken from the code that uses it: a typo is reported
# with the config file and the key, never by every frame (``enhance.strength: -5``), as a
# traceback (NaN in the run's parameters), after a whole fine-tune (``real_ratio: 75`` turned
# the synthetic crops off, ``steps: 0`` registered a copy of the parent, a negative
# ``min_gain_db`` inverted the promotion test) or never (a NaN timeout).
_RANGES: dict[str, _Range] = {
    # starnet_core.stretch.fit_auto_stretch (StretchOptions checks only the mode)
    "stretch.shadows_clip_mad": _Range(high=0.0),
    "stretch.target_background": _Range(0.0, 1.0, low_open=True, high_open=True),
    "validation.max_nonfinite_fraction": _Range(0.0, 1.0),  # starnet_core.imageio.read_image
    "enhance.strength": _Range(0.0),  # starnet_core.masks.enhance
    "database.busy_timeout_s": _Range(0.0),  # flows.db_engine (SQLite's lock wait)
    "database.stale_run_s": _Range(0.0, low_open=True),  # ProvenanceDB(stale_after_s)
    "prefect.gpu_slots": _Range(1),  # ensure_concurrency_limit
    "prefect.serve_limit": _Range(1),
    "prefect.max_attempts": _Range(1),  # 0: every frame exhausted before its first try
    "prefect.thumbnail_px": _Range(1),
    "watch.stable_s": _Range(0.0),  # CompletionTracker
    "watch.incomplete_wait_s": _Range(0.0),  # CompletionTracker
    "watch.poll_s": _Range(0.0, low_open=True),  # FolderWatcher
    "watch.retrain_after_pairs": _Range(1),
    "retrain.steps": _Range(1),
    "retrain.batch_size": _Range(1),
    "retrain.crop_px": _Range(1),
    "retrain.lr": _Range(0.0, low_open=True),
    "retrain.real_ratio": _Range(0.0, 1.0, words="a share in [0, 1]"),
    "retrain.pool_size": _Range(1),
    "retrain.threads": _Range(0, words="an integer >= 0 (0: torch default)"),
    "retrain.eval_scenes": _Range(1),
    "retrain.eval_size_px": _Range(16),
    "retrain.eval_seed": _Range(0),
    "retrain.min_gain_db": _Range(0.0),
    "retrain.max_star_flux_rise": _Range(0.0),
}


def _check_ranges(settings: Settings, where: str) -> None:
    """Every number of ``_RANGES`` is finite and in its range."""
    for key, allowed in _RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(settings, section), name)
        if not allowed.holds(value):
            finite = "" if _finite(value) else " (numbers must be finite)"
            raise SettingsError(
                f"{where}.{key}: expected {allowed.describe(isinstance(value, int))}, "
                f"got {value!r}{finite}"
            )


# database.url: ``dialect[+driver]://...`` as SQLAlchemy reads it, of a backend starnet runs
_DATABASE_URL = re.compile(r"(?P<dialect>[a-z][a-z0-9_]*)(?:\+(?P<driver>[a-z0-9_]+))?://")
_DATABASE_EXAMPLES = (
    "sqlite:////path/to/provenance.db or postgresql+psycopg2://user:password@host:5432/starnet"
)
_ASYNC_DRIVERS = ("asyncpg", "aiosqlite", "psycopg_async", "aiomysql", "asyncmy")


def hide_password(url: str) -> str:
    """``url`` with the password of ``user:password@`` shown as ``***``, for messages; works
    on text that is not a valid URL too (SQLAlchemy's own masking raises on those)."""
    return re.sub(r"((?:^|://)[^:/@?#\s]*:)[^@/?#\s]*@", r"\1***@", url)


def database_url_problem(url: str) -> str | None:
    """What is wrong with the form of ``url`` as starnet's provenance database, with the
    fix; None when it has a backend starnet runs (whether it can connect is another
    matter). Needs no SQLAlchemy: the settings load on a bare GPU box too."""
    m = _DATABASE_URL.match(url)
    shown = hide_password(url)
    if m is None:
        return f"expected a database URL such as {_DATABASE_EXAMPLES}, got {shown!r}"
    dialect, driver = m.group("dialect"), m.group("driver")
    if dialect == "postgres":
        fixed = hide_password("postgresql+psycopg2://" + url[m.end() :])
        return (
            f"{shown!r}: SQLAlchemy does not accept 'postgres://' (libpq's spelling); "
            f"write {fixed!r}"
        )
    if dialect not in ("sqlite", "postgresql"):
        return f"{shown!r}: unsupported backend {dialect!r}; use {_DATABASE_EXAMPLES}"
    if driver in _ASYNC_DRIVERS:
        sync = "postgresql+psycopg2" if dialect == "postgresql" else "sqlite"
        return (
            f"{shown!r}: {dialect}+{driver} is an asyncio driver, as in Prefect's server "
            f"URL; starnet needs {sync}://..."
        )
    return None


def _check_database_url(settings: Settings, where: str) -> None:
    """``database.url`` (or ``STARNET_DATABASE_URL``, which overrides it) has a form that
    starnet can use: ``postgres://`` (libpq's name, which SQLAlchemy refuses), an async
    driver copied from Prefect's settings, or a typo is reported when the settings load,
    naming the setting, not as a traceback from the first command that opens the DB."""
    url = settings.database.url
    if not url:
        return
    problem = database_url_problem(url)
    if problem is not None:
        raise SettingsError(f"{where}: {problem}")


# cron fields: (name, low, high, names for 1.. or 0..)
_CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                      "nov", "dec")),
    ("day of week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)  # fmt: skip
_CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


def cron_problem(cron: str) -> str | None:
    """What is wrong with a 5-field cron string (as Prefect's Cron schedule takes it), or
    None. Plain Python: the settings load without Prefect. Prefect's extensions (``L``,
    ``W``, ``#``) are left to Prefect; its unsupported random/hashed ``R``/``H`` are not."""
    fields = cron.split()
    if len(fields) == 1 and fields[0].lower() in _CRON_ALIASES:
        return None
    if len(fields) != 5:
        return (
            f"expected 5 fields (minute hour day-of-month month day-of-week) or one of "
            f"{', '.join(_CRON_ALIASES)}, got {len(fields)} in {cron!r}"
        )
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in text.lower().split(","):
            if any(c in part for c in "lw#?"):
                continue  # Prefect's extensions: its own check
            if part in ("r", "h") or part.startswith(("r(", "h(")):
                return f"{name} {part!r}: random/hashed expressions are not supported"
            span, _, step = part.partition("/")
            if step and not (step.isdigit() and int(step) > 0):
                return f"{name} {part!r}: the step must be a positive integer"
            if span == "*":
                continue
            for bound in span.split("-", 1):
                value = names.index(bound) + (low if name == "month" else 0) if (
                    bound in names
                ) else (int(bound) if bound.isdigit() else None)  # fmt: skip
                if value is None or not low <= value <= high:
                    return f"{name} {part!r}: expected {low}-{high}{' or a name' if names else ''}"
    return None


def _check_prefect(settings: Settings, where: str) -> None:
    """The ``prefect.*`` strings the flows and ``starnet serve`` use later: a bad one is a
    one-line SettingsError naming the file and key now, not a traceback in serve, in every
    flow run or per dispatched frame. Needs neither Prefect nor torch."""
    p = settings.prefect
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(p.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(
            f"{where}.prefect.timezone: expected an IANA time zone such as UTC or "
            f"Europe/Berlin, got {p.timezone!r}"
        ) from None
    problem = cron_problem(p.nightly_cron)
    if problem is not None:
        raise SettingsError(f"{where}.prefect.nightly_cron: {problem}")
    for key in ("gpu_limit_name", "retrain_limit_name"):
        template = getattr(p, key)
        try:
            name = template.format(host="h")
        except (KeyError, IndexError, ValueError, AttributeError) as e:
            raise SettingsError(
                f"{where}.prefect.{key}: {template!r} is not a name template: only {{host}} "
                f"may be filled in (this machine's name); {type(e).__name__}: {e}"
            ) from None
        if not name.strip():
            raise SettingsError(f"{where}.prefect.{key}: expected a limit name, got {template!r}")
    flow_name, slash, deployment = p.process_deployment.partition("/")
    if not slash or not flow_name.strip() or not deployment.strip() or "/" in deployment:
        raise SettingsError(
            f"{where}.prefect.process_deployment: expected 'flow-name/deployment-name' "
            f"(as `prefect deployment ls` shows it, e.g. "
            f"'process-frame/starnet-process-frame'), got {p.process_deployment!r}"
        )


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: where (1-based line and column) and what, without the
    parser's quoted snippet of the file."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(e).split())
    context = getattr(e, "context", None)
    what = f"{problem} ({context})" if context else problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}"


def load_settings(path: str | Path | None = None) -> Settings:
    """Read settings from ``path`` (or the default lookup) and apply environment overrides."""
    p = Path(path) if path is not None else default_config_path()
    raw: dict[str, Any] = {}
    if p is not None:
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise SettingsError(f"{p}: cannot read config file: {e.strerror or e}") from e
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SettingsError(f"{p}: not valid YAML: {_yaml_problem(e)}") from e
        raw = loaded or {}
    where = str(p) if p else "<defaults>"
    settings = _build(Settings, raw, where)
    _check_options(settings, where)
    _check_choices(settings, where)
    _check_ranges(settings, where)
    _check_prefect(settings, where)
    if os.environ.get("STARNET_DATA_DIR"):
        settings.data_dir = os.environ["STARNET_DATA_DIR"]
    if os.environ.get("STARNET_DATABASE_URL"):
        settings.database.url = os.environ["STARNET_DATABASE_URL"]
        _check_database_url(settings, "STARNET_DATABASE_URL")
    else:
        _check_database_url(settings, f"{where}.database.url")
    return settings


def settings_to_dict(settings: Settings) -> dict[str, Any]:
    """Plain dict of the settings (for provenance and for writing config.yaml)."""
    return dataclasses.asdict(settings)
