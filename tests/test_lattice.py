"""benchmarks.lattice: the periodic pattern in a star layer, found where it is and not
where it is not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from benchmarks import lattice


def _layer(
    amp: float, period: int = 4, size: int = 256, seed: int = 0, grain: float = 0.01
) -> np.ndarray:
    """Grain, a wide smooth hump, 300 stars and (amp > 0) a ``period``-px lattice."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    layer = grain * rng.standard_normal((size, size)).astype(np.float32)
    layer += 0.05 * np.exp(-((xx - 128) ** 2 + (yy - 128) ** 2) / (2 * 60.0**2))
    for x, y, a in zip(*rng.uniform(0, size, (2, 300)), rng.uniform(0.05, 0.8, 300), strict=True):
        layer += a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
    cell = rng.uniform(-1, 1, (period, period)).astype(np.float32)
    cell = amp * (cell - cell.min()) / (cell.max() - cell.min())  # peak-to-peak amp
    return layer + np.tile(cell, (size // period, size // period))


def test_a_lattice_is_measured_and_a_clean_layer_reads_none() -> None:
    for seed in (0, 1, 2):
        # the 4 px pattern's peak-to-peak, under grain 2.5x its size
        with_it, without = _layer(0.004, seed=seed), _layer(0.0, seed=seed)
        assert np.ptp(lattice.phase_pattern(with_it, 4)) == pytest.approx(0.004, rel=0.15)
        assert np.ptp(lattice.phase_pattern(without, 4)) < 0.001
        # the spectral ratio per period: about 1 without a lattice, high on the lattice's
        # own period (other periods share some of its bins: not asserted)
        for period in (4, 8, 32):
            clean = _layer(0.0, seed=seed, grain=0.002)
            lined = _layer(0.004, period=period, seed=seed, grain=0.002)
            for p in lattice.RATIO_PERIODS:
                assert 0.5 < lattice.line_ratio(clean, p) < 2, (period, p)
                ratio = lattice.line_ratio(lined, p)
                if p == period:
                    assert ratio > 3, (period, p, ratio)
    with pytest.raises(ValueError, match="smaller than one 4 px block"):
        lattice.phase_pattern(np.zeros((2, 64)), 4)
    with pytest.raises(ValueError, match="smaller than one 128 px tile"):
        lattice.line_ratio(np.zeros((64, 256)), 4)
    with pytest.raises(ValueError, match="period 64 px: tiles of 128 px hold no such"):
        lattice.line_ratio(np.zeros((256, 256)), 64)


def test_cli_on_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Stretched 16-bit TIFFs: the star layer's lattice is reported per period; a wrong
    shape or a missing file names the file."""
    layer = _layer(0.004, size=256, grain=0.003)
    starless = np.full((256, 256), 0.2, np.float32) + 0.002 * np.random.default_rng(
        1
    ).standard_normal((256, 256)).astype(np.float32)
    original = np.clip(starless + layer, 0, 1)
    for name, img in (("o.tif", original), ("s.tif", np.clip(starless, 0, 1))):
        tifffile.imwrite(tmp_path / name, (img * 65535).round().astype(np.uint16))
    assert lattice.main([str(tmp_path / "o.tif"), str(tmp_path / "s.tif")]) == 0
    row = [r for r in capsys.readouterr().out.splitlines() if "s.tif" in r][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    pattern_4, ratio_4 = float(cells[1]), float(cells[2])
    assert pattern_4 == pytest.approx(4.0, rel=0.15) and ratio_4 > 4
    small = np.random.default_rng(2).integers(0, 65535, (64, 64), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "small.tif", small)
    assert lattice.main([str(tmp_path / "o.tif"), str(tmp_path / "small.tif")]) == 2
    assert "small.tif: shape" in capsys.readouterr().err
    assert lattice.main([str(tmp_path / "o.tif")]) == 2
    assert "an original and at least one starless" in capsys.readouterr().err
    assert lattice.main([str(tmp_path / "o.tif"), str(tmp_path / "nope.tif")]) == 2
    assert "nope.tif" in capsys.readouterr().err
