"""One typed settings object: defaults, config.yaml, unknown keys, bad values, env overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from flows.settings import Settings, SettingsError, load_settings, settings_to_dict

REPO = Path(__file__).resolve().parents[1]


def test_config_yaml_mirrors_the_defaults() -> None:
    # config.yaml documents every tunable with its default: the two never drift apart
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    assert raw == settings_to_dict(Settings())


def test_loads_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("inference:\n  tile_px: 512\n  weights: w.safetensors\nmask:\n  feather_px: 3\n")
    s = load_settings(p)
    assert s.inference.tile_px == 512 and s.inference.weights == "w.safetensors"
    assert s.mask.feather_px == 3.0 and isinstance(s.mask.feather_px, float)
    assert s.inference.overlap_px == 64  # untouched keys keep their defaults


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("inference:\n  tile_size: 512\n")
    with pytest.raises(SettingsError, match=r"c.yaml.inference: unknown key\(s\) tile_size"):
        load_settings(p)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("inference:\n  tile_px: big\n", "inference.tile_px: expected int, got 'big'"),
        ("inference:\n  upsample: 3\n", "inference.upsample: expected bool"),
        ("inference:\n  batch_size: true\n", "expected an integer, got True"),
        ("mask: 5\n", "mask: expected a mapping"),
        ("inference: [\n", "not valid YAML"),
    ],
)
def test_bad_values_are_clear(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(SettingsError, match=match):
        load_settings(p)


def test_bad_yaml_is_one_line_with_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("watch:\n  stable_s: 2\n  poll_s: [1\n")
    with pytest.raises(SettingsError) as err:
        load_settings(p)
    message = str(err.value)
    assert "\n" not in message and f"{p}: not valid YAML: line 4, column 1: expected" in message


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings(tmp_path / "nope.yaml")


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STARNET_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("STARNET_DATABASE_URL", "postgresql+psycopg2://u@h/db")
    s = load_settings(None)
    assert s.data_dir == str(tmp_path / "d")
    assert s.database_url == "postgresql+psycopg2://u@h/db"
    assert s.resolve("incoming") == tmp_path / "d" / "incoming"
    assert s.resolve("/abs/x") == Path("/abs/x")


def test_default_database_is_sqlite_in_data_dir(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("STARNET_DATABASE_URL", raising=False)
    monkeypatch.setenv("STARNET_DATA_DIR", str(tmp_path))
    assert load_settings(None).database_url == f"sqlite:///{tmp_path.resolve()}/provenance.db"


def test_every_section_is_a_dataclass_with_defaults() -> None:
    for f in dataclasses.fields(Settings):
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("inference:\n  passes: 0\n", r"c.yaml.inference: passes must be an int >= 1"),
        ("inference:\n  ensemble: 3\n", r"c.yaml.inference: ensemble must be one of"),
        ("inference:\n  overlap_px: 300\n", r"c.yaml.inference: overlap_px must be < tile_px"),
        ("inference:\n  lattice_px: 1\n", r"c.yaml.inference: lattice_px must be 0 \(off\) or an"),
        ("mask:\n  threshold: 1.5\n", r"c.yaml.mask: threshold must be a number in \[0, 1\)"),
        ("stretch:\n  mode: sometimes\n", r"c.yaml.stretch: stretch mode must be one of"),
        ("sky_colour:\n  clip_level: 0.2\n", r"c.yaml.sky_colour: clip_level must be a number in"),
        ("spikes:\n  min_arm_px: -2\n", r"c.yaml.spikes: min_arm_px must be >= 0"),
        ("remnants:\n  sigma_px: 0\n", r"c.yaml.remnants: sigma_px must be > 0"),
        ("remnants:\n  threshold: 2\n", r"c.yaml.remnants: threshold must be a number in"),
    ],
)
def test_bad_option_values_name_the_config_file(tmp_path: Path, text: str, match: str) -> None:
    # caught when the file is read, not later when the first frame is processed
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(SettingsError, match=match):
        load_settings(p)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "validation:\n  nan_policy: zeros\n",
            r"c.yaml.validation.nan_policy: expected one of error, zero, median, got 'zeros'",
        ),
        (
            "retrain:\n  promote: sometimes\n",
            r"c.yaml.retrain.promote: expected one of better, always, never, got 'sometimes'",
        ),
        (
            "prefect:\n  submit: remote\n",
            r"c.yaml.prefect.submit: expected one of auto, local, deployment, got 'remote'",
        ),
    ],
)
def test_bad_choices_name_the_config_file_key_and_choices(
    tmp_path: Path, text: str, match: str
) -> None:
    # a typo in a policy is the config file's fault: reported when it is read, not by
    # every frame (nan_policy) or after a whole fine-tune (promote)
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(SettingsError, match=match):
        load_settings(p)


def test_the_shipped_config_loads() -> None:
    assert load_settings(REPO / "config.yaml") == Settings()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "enhance:\n  strength: .nan\n",
            r"c.yaml.enhance.strength: expected a number >= 0, got nan",
        ),
        ("enhance:\n  strength: .inf\n", r"enhance.strength: expected a number >= 0, got inf \("),
        (
            "enhance:\n  strength: -5\n",
            r"c.yaml.enhance.strength: expected a number >= 0, got -5.0",
        ),
        (
            "stretch:\n  target_background: .nan\n",
            r"c.yaml.stretch.target_background: expected a number in \(0, 1\), got nan",
        ),
        ("stretch:\n  target_background: 1\n", r"stretch.target_background: expected a number in"),
        (
            "stretch:\n  shadows_clip_mad: .nan\n",
            r"c.yaml.stretch.shadows_clip_mad: expected a number <= 0, got nan",
        ),
        ("stretch:\n  shadows_clip_mad: -.inf\n", r"stretch.shadows_clip_mad: .* got -inf"),
        ("stretch:\n  shadows_clip_mad: 2\n", r"stretch.shadows_clip_mad: .* got 2.0"),
        (
            "validation:\n  max_nonfinite_fraction: 5\n",
            r"c.yaml.validation.max_nonfinite_fraction: expected a number in \[0, 1\], got 5.0",
        ),
        ("database:\n  busy_timeout_s: .nan\n", r"c.yaml.database.busy_timeout_s: .* got nan"),
        ("database:\n  stale_run_s: 0\n", r"c.yaml.database.stale_run_s: expected a number > 0"),
        ("prefect:\n  max_attempts: 0\n", r"c.yaml.prefect.max_attempts: expected an integer >= 1"),
        ("prefect:\n  gpu_slots: 0\n", r"c.yaml.prefect.gpu_slots: expected an integer >= 1"),
        ("watch:\n  poll_s: 0\n", r"c.yaml.watch.poll_s: expected a number > 0, got 0.0"),
        ("watch:\n  stable_s: -1\n", r"c.yaml.watch.stable_s: expected a number >= 0"),
        ("retrain:\n  lr: .nan\n", r"c.yaml.retrain.lr: expected a number > 0, got nan"),
    ],
)
def test_bad_numbers_name_the_config_file_and_key(tmp_path: Path, text: str, match: str) -> None:
    # caught when the file is read: never a traceback (NaN in the run's parameters is not
    # JSON), a failure of every frame naming neither file nor key, or a silent NaN timeout
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(SettingsError, match=match):
        load_settings(p)


def _numbers() -> list[tuple[str, str, type]]:
    """(section, key, type) of every int or float setting."""
    out = []
    for section in dataclasses.fields(Settings):
        cls = section.default_factory  # type: ignore[misc]
        if not dataclasses.is_dataclass(cls):
            continue
        for f in dataclasses.fields(cls):
            if f.type in ("int", "float", int, float):
                out.append((section.name, f.name, float if f.type in ("float", float) else int))
    return out


@pytest.mark.parametrize(("section", "key", "kind"), _numbers())
def test_every_number_is_checked_when_the_file_is_read(
    tmp_path: Path, section: str, key: str, kind: type
) -> None:
    # whether the core's option classes check it or the settings' own table: no number
    # that is not finite, and none far out of its range, gets past the loader
    p = tmp_path / "c.yaml"
    for bad in (".nan", ".inf", "-.inf") if kind is float else ("-1000000",):
        p.write_text(f"{section}:\n  {key}: {bad}\n")
        with pytest.raises(SettingsError) as e:
            load_settings(p)
        assert f"c.yaml.{section}" in str(e.value) and key in str(e.value), (bad, str(e.value))


def test_default_patterns_take_every_file_name_imageio_reads() -> None:
    # `watch` and `run FOLDER` skip what the patterns miss: every input the README lists
    from flows.watcher import matches
    from starnet_core.imageio import ImageError, _detect_format

    patterns = Settings().watch.patterns
    bases = (".fits", ".fit", ".fts", ".fz", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".xisf")
    for base in bases:
        for wrapper in ("", ".gz", ".bz2", ".xz", ".zip"):
            for name in (f"M42{base}{wrapper}", f"M42{base}{wrapper}".upper()):
                try:
                    _detect_format(Path("/nonexistent") / name)  # by the name alone
                    readable = True
                except ImageError:
                    readable = False
                assert matches(Path(name), patterns) == readable, name
    for name in ("M42.fits.bz2", "M42.fit.gz", "M42.fts.gz", "M42.fits.gz", "M42.fz"):
        assert matches(Path(name), patterns), name
