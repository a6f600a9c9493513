"""The spike step: the frame's spike angle, and the arms it lowers (starnet_core.spikes)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from starnet_core.masks import finish_starless
from starnet_core.options import CoreFillOptions, ProtectOptions, SkyColourOptions, SpikeOptions
from starnet_core.spikes import find_spike_angle, remove_spikes, spike_arms

SIZE = 192
NOISE = 0.004


def _scene(
    angle_deg: float | None, seed: int = 0, channels: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(original, net output that took the cores but left 70% of the spikes, sky truth,
    spike light): a noisy sky with a gradient and a few bright stars, each with a
    cross of thin spikes at ``angle_deg`` and ``angle_deg + 90`` (none if None)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    sky = 0.12 + 0.05 * x / SIZE + 0.02 * np.sin(y / 23.0)
    cores = np.zeros_like(sky)
    spikes = np.zeros_like(sky)
    for _ in range(9):
        cy, cx = rng.uniform(30, SIZE - 30, 2)
        amp = rng.uniform(0.5, 0.8)
        dy, dx = y - cy, x - cx
        cores += amp * np.exp(-(dx**2 + dy**2) / (2 * 1.6**2))
        if angle_deg is None:
            continue
        for a in (angle_deg, angle_deg + 90.0):
            t = np.deg2rad(a)
            along = dx * np.cos(t) + dy * np.sin(t)
            across = -dx * np.sin(t) + dy * np.cos(t)
            spikes += (
                0.35 * amp * np.exp(-(across**2) / (2 * 0.6**2)) * (1 + np.abs(along) / 3) ** -1.0
            )
    noise = rng.normal(0, NOISE, (channels, SIZE, SIZE)).astype(np.float32)
    tint = np.array([1.0, 0.95, 1.1][:channels], np.float32)[:, None, None]
    truth = np.clip(sky[None] * tint + noise, 0, 1).astype(np.float32)
    original = np.clip(truth + (cores + spikes)[None], 0, 1).astype(np.float32)
    net = np.clip(truth + 0.7 * spikes[None], 0, 1).astype(np.float32)
    return original, net, truth, spikes


def _rms(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b)[:, where] ** 2)))


def _arms(original: np.ndarray, net: np.ndarray, spikes: np.ndarray) -> np.ndarray:
    """Where the spikes stand well above the noise, the stars' own pixels (the
    network's job, left alone by the step) left out."""
    return (spikes > 0.02) & ((original - net).mean(0) <= SpikeOptions().star_threshold)


@pytest.mark.parametrize("angle", [0.0, 17.0, 45.0, 71.5])
def test_finds_the_frames_spike_angle(angle: float) -> None:
    original, net, _, _ = _scene(angle)
    found = find_spike_angle(original, net, SpikeOptions())
    diff = abs((found.angle_deg - angle + 45) % 90 - 45)  # angles are modulo 90
    assert diff <= 1.5, (found, angle)
    assert found.score >= SpikeOptions().min_score
    assert found.stars >= 3


def test_no_spikes_scores_below_the_threshold_and_changes_nothing() -> None:
    original, net, _, _ = _scene(None)
    options = SpikeOptions()
    assert find_spike_angle(original, net, options).score < options.min_score
    assert remove_spikes(original, net, options) is net


def test_lowers_the_spikes_the_network_left_and_nothing_else() -> None:
    original, net, truth, spikes = _scene(30.0)
    out = remove_spikes(original, net, SpikeOptions())
    assert out.shape == net.shape and out.dtype == np.float32
    arm = _arms(original, net, spikes)
    before, after = _rms(net, truth, arm), _rms(out, truth, arm)
    assert after < 0.4 * before, (before, after)
    # it only lowers, and only near the arms (within 3 px of a visible spike)
    assert np.all(out <= net + 1e-7)
    far = ndimage.maximum_filter(spikes, 7) < 1e-3
    assert far.mean() > 0.25
    assert np.array_equal(out[:, far], net[:, far])


def test_a_merged_doubles_arms_are_followed_from_each_star() -> None:
    """Two bright stars 5 px apart merge into one component of the star layer; their
    arms perpendicular to the pair run through each star, 2.5 px beside the pair's
    centroid, and are taken all the same."""
    angle = 30.0
    original, net, truth, _ = _scene(angle)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    across_dir = np.deg2rad(angle + 90.0)
    cores = np.zeros_like(y)
    arms = np.zeros_like(y)
    for sign in (-1.0, 1.0):  # the pair lies across the 30 degree arms
        cy = 96.0 + sign * 2.5 * np.sin(across_dir)
        cx = 150.0 + sign * 2.5 * np.cos(across_dir)
        dy, dx = y - cy, x - cx
        cores += 0.7 * np.exp(-(dx**2 + dy**2) / (2 * 1.6**2))
        t = np.deg2rad(angle)
        along = dx * np.cos(t) + dy * np.sin(t)
        across = -dx * np.sin(t) + dy * np.cos(t)
        arms += 0.25 * np.exp(-(across**2) / (2 * 0.6**2)) * (1 + np.abs(along) / 3) ** -1.0
    original = np.clip(original + (cores + arms)[None], 0, 1).astype(np.float32)
    net = np.clip(net + 0.7 * arms[None], 0, 1).astype(np.float32)
    layer = (original - net).mean(0)
    labels, _ = ndimage.label(layer > SpikeOptions().star_threshold)
    assert (
        labels[int(96 - 2.5 * np.sin(across_dir)), int(150 - 2.5 * np.cos(across_dir))]
        == (labels[int(96 + 2.5 * np.sin(across_dir)), int(150 + 2.5 * np.cos(across_dir))])
    )  # one component
    out = remove_spikes(original, net, SpikeOptions())
    pair_arm = (arms > 0.02) & (layer <= SpikeOptions().star_threshold)
    before, after = _rms(net, truth, pair_arm), _rms(out, truth, pair_arm)
    assert after < 0.4 * before, (before, after)


def test_arms_are_lowered_up_to_the_stars_core() -> None:
    """The arms' inner ends lie in the star's component of the star layer (above
    ``star_threshold``); they are lowered up to the core (``core_threshold``), and
    with the core at the star threshold they are left as they were."""
    original, net, truth, spikes = _scene(30.0)
    layer = (original - net).mean(0)
    options = SpikeOptions()
    inner = (spikes > 0.02) & (layer > options.star_threshold) & (layer <= options.core_threshold)
    assert inner.sum() > 20
    out = remove_spikes(original, net, options)
    before, after = _rms(net, truth, inner), _rms(out, truth, inner)
    assert after < 0.6 * before, (before, after)
    assert np.all(out <= net + 1e-7)
    core = layer > options.core_threshold
    assert np.array_equal(out[:, core], net[:, core])
    old = remove_spikes(original, net, SpikeOptions(core_threshold=options.star_threshold))
    assert np.array_equal(old[:, inner], net[:, inner])


def test_what_the_step_measured_goes_to_figures() -> None:
    original, net, _, _ = _scene(30.0)
    figures: dict[str, float] = {}
    remove_spikes(original, net, SpikeOptions(), figures)
    assert abs(figures["spike_angle_deg"] - 30.0) < 1.0
    assert figures["spike_score"] >= SpikeOptions().min_score
    assert 0.0 < figures["spike_lowered_fraction"] < 0.2
    # below the threshold: measured, nothing lowered; switched off: nothing measured
    plain_o, plain_n, _, _ = _scene(None)
    quiet: dict[str, float] = {}
    remove_spikes(plain_o, plain_n, SpikeOptions(), quiet)
    assert quiet["spike_lowered_fraction"] == 0.0 and quiet["spike_score"] < 6.0
    off: dict[str, float] = {}
    remove_spikes(original, net, SpikeOptions(enabled=False), off)
    assert off == {}


def test_mono_frames_work_too() -> None:
    original, net, truth, spikes = _scene(60.0, seed=3, channels=1)
    out = remove_spikes(original, net, SpikeOptions())
    arm = _arms(original, net, spikes)
    assert _rms(out, truth, arm) < 0.5 * _rms(net, truth, arm)


def test_a_line_on_one_side_of_a_star_is_kept() -> None:
    """A filament that leaves a star on one side only is not a spike (spikes are
    symmetric): with the frame's angle found, it is left as it is."""
    original, net, _, _ = _scene(20.0, seed=5)
    found = find_spike_angle(original, net, SpikeOptions())
    layer = (original - net).mean(0)
    cy, cx = np.unravel_index(np.argmax(layer), layer.shape)
    t = np.deg2rad(found.angle_deg)
    s = np.arange(6, 60, 0.25)
    yy = np.rint(cy + s * np.sin(t)).astype(int)
    xx = np.rint(cx + s * np.cos(t)).astype(int)
    ok = (yy >= 0) & (yy < SIZE) & (xx >= 0) & (xx < SIZE)
    # the same stars without spikes, and a bright one-sided filament along the angle
    clean_o, clean_n, _, _ = _scene(None, seed=5)
    filament = np.zeros(layer.shape, np.float32)
    filament[yy[ok], xx[ok]] = 0.08
    o = np.clip(clean_o + filament, 0, 1)
    n = np.clip(clean_n + filament, 0, 1)
    mask, _ = spike_arms(o, n, found.angle_deg, SpikeOptions())
    assert not mask[filament > 0].any()
    # the same filament through the star on both sides is taken as a spike
    both = filament.copy()
    both[np.clip(2 * cy - yy[ok], 0, SIZE - 1), np.clip(2 * cx - xx[ok], 0, SIZE - 1)] = 0.08
    o2, n2 = np.clip(clean_o + both, 0, 1), np.clip(clean_n + both, 0, 1)
    mask2, _ = spike_arms(o2, n2, found.angle_deg, SpikeOptions())
    assert mask2[both > 0].mean() > 0.5


def test_disabled_and_the_finished_pipeline() -> None:
    original, net, truth, spikes = _scene(45.0, seed=2)
    off = SpikeOptions(enabled=False)
    assert remove_spikes(original, net, off) is net
    finish = (ProtectOptions(), SkyColourOptions(), CoreFillOptions())
    plain = finish_starless(original, net, *finish, spikes=off)
    done = finish_starless(original, net, *finish)  # spikes on by default
    arm = _arms(original, net, spikes)
    assert _rms(done, truth, arm) < 0.5 * _rms(plain, truth, arm)


def test_shape_mismatch_is_refused() -> None:
    original, net, _, _ = _scene(10.0)
    with pytest.raises(ValueError, match="one shape"):
        remove_spikes(original, net[:, :-1], SpikeOptions())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("enabled", 1),
        ("min_score", -1.0),
        ("star_threshold", 0.0),
        ("max_stars", 0),
        ("ray_px", 2),
        ("detect_sigma", float("nan")),
        ("line_ratio", -0.5),
        ("min_arm_px", 1.5),
        ("gap_px", -1),
        ("core_threshold", 0.0),
        ("core_threshold", 1.5),
    ],
)
def test_bad_options_are_refused_with_their_name(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SpikeOptions(**{field: value})
