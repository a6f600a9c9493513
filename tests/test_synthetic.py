"""The synthetic pair generator: seeded, valid, and the pair differs only by the stars."""

from __future__ import annotations

import numpy as np

from starnet_core.synthetic import fractal_noise, make_pair, make_pool


def test_seeded_and_reproducible() -> None:
    a = make_pair(np.random.default_rng(7), 64)
    b = make_pair(np.random.default_rng(7), 64)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_pairs_are_valid_images() -> None:
    rng = np.random.default_rng(3)
    for _ in range(8):
        orig, clean, scene = make_pair(rng, 64)
        for img in (orig, clean):
            assert img.shape == (3, 64, 64) and img.dtype == np.float32
            assert np.isfinite(img).all() and img.min() >= 0 and img.max() <= 1
        assert scene.star_xy.shape[1] == 2 and len(scene.star_xy) == len(scene.star_peak)
        assert 0.01 < float(np.median(clean)) < 0.75


def test_only_the_stars_differ() -> None:
    # original and starless share background and noise: away from stars they are equal,
    # and stars only add light (up to quantisation)
    medians = []
    for seed in range(8):
        orig, clean, _ = make_pair(np.random.default_rng(seed), 96, dense=False)
        diff = orig - clean
        # stars only add light; their own shot noise can dip a faint wing below the truth
        assert (diff > -2e-3).mean() > 0.95 and diff.mean() > 0
        medians.append(float(np.median(np.abs(diff))))
    assert float(np.median(medians)) < 0.005


def test_dense_fields_have_many_stars() -> None:
    _, _, scene = make_pair(np.random.default_rng(5), 128, dense=True)
    assert len(scene.star_xy) >= 600


def test_fractal_noise_is_normalised() -> None:
    f = fractal_noise(np.random.default_rng(0), 64, 3.0)
    assert abs(float(f.mean())) < 1e-5 and abs(float(f.std()) - 1) < 1e-3


def test_pool_shapes() -> None:
    orig, clean = make_pool(seed=1, count=3, size_px=32)
    assert orig.shape == clean.shape == (3, 3, 32, 32)
