"""Quality metrics on hand-built images, and the quality benchmark on a tiny scene and model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

# benchmarks/ is a top-level folder of the checkout (pytest's pythonpath puts it on sys.path)
from benchmarks import quality
from starnet_core import metrics
from starnet_core.checkpoint import is_checkpoint, load_any, load_generator_from_checkpoint
from starnet_core.inference import remove_stars
from starnet_core.model import ModelConfig, StarNetUNet, save_weights
from starnet_core.synthetic import MIXES, Scene, make_pair

SIZE = 64


def _star(x: float, y: float, amp: float, fwhm_px: float = 2.5) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    s = fwhm_px / 2.3548
    g = amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))
    return np.repeat(g[None], 3, 0).astype(np.float32)


def _pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    truth = (0.2 + rng.normal(0, 0.005, (3, SIZE, SIZE))).astype(np.float32)
    xy = np.array([[16.0, 16.0], [45.0, 40.0], [30.0, 50.0]], np.float32)
    stars = _star(16, 16, 0.5) + _star(45, 40, 0.2) + _star(30, 50, 0.001)
    return truth + stars, truth, xy


def test_psnr_values_masks_and_errors() -> None:
    a = np.zeros((3, 8, 8), np.float32)
    assert metrics.psnr(a, a) == metrics.PSNR_MAX_DB
    assert metrics.psnr(a + 0.1, a) == pytest.approx(20.0)
    mask = np.zeros((8, 8), bool)
    mask[:2] = True
    b = a.copy()
    b[:, 4:] = 0.5
    assert metrics.psnr(b, a, mask) == metrics.PSNR_MAX_DB
    assert math.isnan(metrics.psnr(b, a, np.zeros((8, 8), bool)))
    with pytest.raises(ValueError, match="shape"):
        metrics.psnr(a, a[:, :4])
    with pytest.raises(ValueError, match="mask shape"):
        metrics.psnr(a, a, np.ones((4, 4), bool))


def test_aperture_sums_count_pixel_centres() -> None:
    img = np.ones((10, 10), np.float32)
    sums, n = metrics.aperture_sums(img, np.array([[5.0, 5.0], [0.0, 0.0]]), 1.0)
    assert n.tolist() == [5, 3]
    assert sums.tolist() == [5.0, 3.0]
    with pytest.raises(ValueError, match="radius_px"):
        metrics.aperture_sums(img, np.zeros((1, 2)), 0.0)
    with pytest.raises(ValueError, match="xy"):
        metrics.aperture_sums(img, np.zeros((3,)), 1.0)


def test_residual_star_flux_fractions() -> None:
    orig, truth, xy = _pair()
    ones = metrics.residual_star_flux(orig, orig, truth, xy, 4.0)
    np.testing.assert_allclose(ones[:2], 1.0)
    assert math.isnan(ones[2])  # too faint to measure
    zeros = metrics.residual_star_flux(orig, truth, truth, xy, 4.0)
    np.testing.assert_allclose(zeros[:2], 0.0, atol=1e-6)
    half = metrics.residual_star_flux(orig, truth + 0.5 * (orig - truth), truth, xy, 4.0)
    np.testing.assert_allclose(half[:2], 0.5, atol=1e-3)
    darker = metrics.residual_star_flux(orig, truth - _star(16, 16, 0.3), truth, xy, 4.0)
    assert darker[0] == 0.0
    # a uniform glow left over is not a star's flux (the annulus takes it out)
    glow = metrics.residual_star_flux(orig, truth + 0.05, truth, xy, 4.0)
    np.testing.assert_allclose(glow[:2], 0.0, atol=1e-3)


def test_brightness_bins_and_summary() -> None:
    bins = metrics.brightness_bins(np.array([0.1, 0.29, 0.3, 2.99, 3.0, 50.0]), 0.01)
    assert bins.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="noise_sigma"):
        metrics.brightness_bins(np.ones(2), 0.0)
    s = metrics.summarize(np.array([0.0, 1.0, np.nan, 0.5]), np.array([0, 0, 1, 2]))
    assert s["all"]["n"] == 3 and s["all"]["median"] == 0.5
    assert s["faint"]["median"] == 0.5 and s["medium"]["n"] == 0 and math.isnan(s["medium"]["p95"])


def test_background_mask_keeps_away_from_stars() -> None:
    orig, truth, xy = _pair()
    bg = metrics.background_mask(orig, truth, None, far_px=5.0)
    assert not bg[16, 16] and not bg[16, 24] and bg[5, 60]
    scene = Scene(xy, np.array([1.0, 1.0, 1.0]), np.zeros((0, 2)), 2.5, 0.01, False)
    with_scene = metrics.background_mask(orig, truth, scene, far_px=5.0)
    assert not with_scene[50, 30]  # the faint star's position counts although it changes nothing
    assert with_scene.sum() < bg.sum()


def test_structure_kept_counts_lost_galaxy_flux() -> None:
    rng = np.random.default_rng(1)
    truth = (0.2 + rng.normal(0, 0.002, (3, SIZE, SIZE))).astype(np.float32)
    truth += _star(32, 32, 0.3, fwhm_px=8.0)  # the "galaxy"
    orig = truth + _star(34, 30, 0.5)  # a star on top of it
    gxy = np.array([[32.0, 32.0], [200.0, 5.0]])
    kept = metrics.structure_kept(orig, orig, truth, gxy, 6.0)
    assert kept[0] == pytest.approx(1.0, abs=0.01) and math.isnan(kept[1])
    flat = np.full_like(truth, 0.2)
    assert metrics.structure_kept(orig, flat, truth, gxy, 6.0)[0] < 0.1
    halved = truth - 0.5 * _star(32, 32, 0.3, fwhm_px=8.0)
    assert metrics.structure_kept(orig, halved, truth, gxy, 6.0)[0] == pytest.approx(0.5, abs=0.1)


def test_structure_kept_shared_background_ignores_stars_in_the_annulus() -> None:
    """Stars crowding the annulus lift the output's own ring median: an output that
    keeps the galaxy and every star then seems to lose its light, unless the truth's
    ring level is shared; a darkened galaxy still counts as lost."""
    rng = np.random.default_rng(2)
    truth = (0.2 + rng.normal(0, 0.002, (3, SIZE, SIZE))).astype(np.float32)
    truth += _star(32, 32, 0.3, fwhm_px=8.0)
    orig = truth.copy()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    d = np.hypot(xx - 32, yy - 32)
    orig[:, (d >= 8) & (d <= 14)] += 0.1  # a crowded annulus, as in a dense field
    gxy = np.array([[32.0, 32.0]])
    # no starless pixel left in the ring: the truth's level is shared by default too
    assert metrics.structure_kept(orig, orig, truth, gxy, 6.0)[0] == pytest.approx(1.0, abs=0.01)
    shared = metrics.structure_kept(orig, orig, truth, gxy, 6.0, shared_background=True)
    assert shared[0] == pytest.approx(1.0, abs=0.01)
    halved = truth - 0.5 * _star(32, 32, 0.3, fwhm_px=8.0)
    half = metrics.structure_kept(orig, halved, truth, gxy, 6.0, shared_background=True)
    assert half[0] == pytest.approx(0.5, abs=0.1)


def test_structure_kept_levels_on_the_rings_starless_pixels() -> None:
    """Stars an output leaves in the annulus do not lift its level: the input itself keeps
    the whole galaxy (it read 0.58 with the plain ring median), and so does an output
    with no star at all; a darkened galaxy still counts as lost."""
    rng = np.random.default_rng(3)
    truth = (0.2 + rng.normal(0, 0.0005, (3, SIZE, SIZE))).astype(np.float32)
    galaxy = _star(32, 32, 0.3, fwhm_px=8.0)
    truth += galaxy
    orig = truth.copy()
    for k in range(10):  # ten stars in the ring 8-14 px from the galaxy
        a = 2 * np.pi * k / 10
        orig += _star(32 + 11 * np.cos(a), 32 + 11 * np.sin(a), 0.5)
    gxy = np.array([[32.0, 32.0]])
    assert metrics.structure_kept(orig, orig, truth, gxy, 6.0)[0] == pytest.approx(1.0, abs=0.02)
    assert metrics.structure_kept(orig, truth, truth, gxy, 6.0)[0] == pytest.approx(1.0, abs=0.02)
    halved = orig - 0.5 * galaxy
    assert metrics.structure_kept(orig, halved, truth, gxy, 6.0)[0] == pytest.approx(0.5, abs=0.1)


def test_detectable_fraction() -> None:
    orig, truth, xy = _pair()
    assert metrics.detectable_counts(orig, orig, truth, xy, 4.0) == (2, 2)
    assert metrics.detectable_fraction(orig, truth, truth, xy, 4.0) == 0.0
    assert math.isnan(metrics.detectable_fraction(truth, truth, truth, xy, 4.0))
    # a uniform glow left over is not a detectable star
    assert metrics.detectable_fraction(orig, truth + 0.05, truth, xy, 4.0) == 0.0


def _tiny_model() -> StarNetUNet:
    torch.manual_seed(0)
    return StarNetUNet(ModelConfig(widths=(4, 8), blocks=(1, 1))).eval()


def _tiny_case(seed: int, name: str) -> quality.Case:
    o, t, scene = make_pair(np.random.default_rng(seed), SIZE)
    return quality.Case(name, o, t, scene, seed, quality.scene_properties(o, t, scene))


def _write_real_pair(root: Path) -> None:
    rng = np.random.default_rng(2)
    clean = (0.2 + rng.normal(0, 0.01, (SIZE, SIZE, 3))).clip(0, 1)
    orig = clean.copy()
    orig[30:33, 30:33] = 0.9
    for sub, arr in (("original", orig), ("starless", clean)):
        (root / sub).mkdir(parents=True)
        Image.fromarray((arr * 255).astype(np.uint8)).save(root / sub / "real_0.png")


def test_benchmark_end_to_end_on_a_tiny_scene(tmp_path: Path) -> None:
    _write_real_pair(tmp_path / "pairs")
    cases = [_tiny_case(9_000_001, "a"), _tiny_case(9_000_003, "b")]  # dense, sparse
    results = quality.run_benchmark(
        _tiny_model(),
        model_label="tiny random model",
        real_dir=tmp_path / "pairs",
        preview_dir=tmp_path / "previews",
        tile_options=quality.TileOptions(tile_px=32, overlap_px=8, device="cpu"),
        cases=cases,
    )
    syn = results["synthetic"]["overall"]
    assert set(syn) == {"input", "classical", "model"}
    assert syn["input"]["residual_star_flux"]["all"]["median"] == pytest.approx(1.0)
    # by field: each scene's measurable stars go to its group, dense or other
    assert [c.properties["dense"] for c in cases] == [True, False]
    by_field = syn["model"]["residual_by_field"]
    per_scene = [
        r["methods"]["model"]["residual_star_flux"]["all"]["n"]
        for r in results["synthetic"]["scenes"]
    ]
    assert [by_field["dense"]["n"], by_field["other"]["n"]] == per_scene
    assert results["real"]["overall"]["classical"]["psnr_db"] > 0
    assert results["model"]["macs_per_px"] > 0 and results["model"]["seam_score"] >= 0
    text = quality.render_markdown(results)
    assert "| classical |" in text and "real_0" in text
    # per scene: PSNR / bg PSNR / bright residual / galaxies kept, for every method
    row = next(line for line in text.splitlines() if line.startswith("| a |"))
    assert [cell.count(" / ") for cell in row.split("|")[5:8]] == [3, 3, 3]
    assert "| method | dense fields | other scenes |" in text
    assert results["scene_mix"] == "default" and "mix" not in text
    assert "generator's 'hard' mix" in quality.render_markdown(results | {"scene_mix": "hard"})
    json.dumps(quality.finite_json(results), allow_nan=False)
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == [
        "real-real_0.png",
        "synthetic-a.png",
        "synthetic-b.png",
    ]


def test_benchmark_reports_large_galaxies_apart(tmp_path: Path) -> None:
    """Scenes of the "large-galaxies" mix carry the large galaxy kept figure, per scene
    and overall, and the report gets its table; the input keeps all of it, and a
    method that flattens the galaxy keeps little."""
    cases = []
    for seed in (9_000_001, 9_000_002):
        o, t, scene = make_pair(np.random.default_rng(seed), 96, mix=MIXES["large-galaxies"])
        props = quality.scene_properties(o, t, scene)
        cases.append(quality.Case(f"g{seed}", o, t, scene, seed, props))
    results = quality.run_benchmark(None, model_label="none", real_dir=None, cases=cases)
    overall = results["synthetic"]["overall"]
    assert overall["input"]["large_galaxy_kept"] == {"mean": pytest.approx(1.0, abs=0.02), "n": 2}
    per = [s["methods"]["classical"]["large_galaxy_kept"] for s in results["synthetic"]["scenes"]]
    assert overall["classical"]["large_galaxy_kept"]["mean"] == pytest.approx(np.mean(per))
    text = quality.render_markdown(results)
    assert "Large galaxies kept" in text and "| input | 1.00 (2) |" in text
    o, t, scene = cases[0].original, cases[0].truth, cases[0].scene
    assert scene is not None and scene.large_galaxy is not None
    x, y, re = (float(v) for v in scene.large_galaxy)
    flat = np.broadcast_to(np.median(t, axis=(1, 2), keepdims=True), t.shape)
    kept = metrics.structure_kept(
        o, flat, t, np.array([[x, y]]), quality.LARGE_KEPT_RADII * re, shared_background=True
    )
    assert kept[0] < 0.5
    plain = quality.run_benchmark(
        None, model_label="none", real_dir=None, cases=[_tiny_case(9_000_003, "c")]
    )
    assert "large_galaxy_kept" not in plain["synthetic"]["overall"]["input"]
    assert "Large galaxies kept" not in quality.render_markdown(plain)


def test_scene_properties_and_categories() -> None:
    case = _tiny_case(9_000_003, "c")
    p = case.properties
    assert set(p) >= {"stars", "dense", "spikes", "galaxies", "saturated_fraction", "bits"}
    assert quality.CATEGORY_TESTS["dense"](p) != quality.CATEGORY_TESTS["sparse"](p) or (
        p["saturated_fraction"] >= 0.005
    )
    with pytest.raises(ValueError, match="category"):
        quality.synthetic_cases([("nebulae", 1)], SIZE)


def test_a_glow_cap_measures_the_same_scenes_with_another_truth() -> None:
    plan = [("dense", 1)]
    default = quality.synthetic_cases(plan, SIZE)[0]
    flat = quality.synthetic_cases(plan, SIZE, glow_cap=0.0)[0]
    assert flat.seed == default.seed
    np.testing.assert_array_equal(flat.scene.star_xy, default.scene.star_xy)
    assert float(flat.truth.mean()) < float(default.truth.mean())  # no glow kept


def test_another_scene_mix_draws_other_scenes_from_the_held_out_seeds() -> None:
    from starnet_core.synthetic import MIXES

    plan = [("spikes", 2)]
    default = quality.synthetic_cases(plan, SIZE)
    hard = quality.synthetic_cases(plan, SIZE, mix=MIXES["hard"])
    first = quality.SEED_BASE + list(quality.CATEGORY_TESTS).index("spikes") * quality.SEED_STRIDE
    assert all(first <= c.seed < first + quality.SEED_STRIDE for c in hard)
    assert all(c.properties["spikes"] for c in hard)
    # spikes are more common in the hard mix, so its first spiked seeds come sooner
    assert hard[-1].seed <= default[-1].seed
    assert not np.array_equal(hard[0].original, default[0].original)


def test_generator_loads_from_a_checkpoint_and_from_weights(tmp_path: Path) -> None:
    model = _tiny_model()
    tensors = {f"g.{k}": v.contiguous() for k, v in model.state_dict().items()}
    tensors["d.head.weight"] = torch.zeros(1)
    ckpt = tmp_path / "checkpoint.safetensors"
    save_file(tensors, str(ckpt), metadata={"step": "7", "model_config": model.config.to_json()})
    assert is_checkpoint(ckpt)
    loaded, meta = load_generator_from_checkpoint(ckpt)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert meta["step"] == "7"
    assert "step 7" in load_any(ckpt)[1]
    weights = tmp_path / "w.safetensors"
    save_weights(model, weights, version="test")
    assert not is_checkpoint(weights)
    assert "version test" in load_any(weights)[1]
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="model_config"):
        load_generator_from_checkpoint(bad)
    with pytest.raises(ValueError, match="not found"):
        load_generator_from_checkpoint(tmp_path / "missing.safetensors")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA answer")
def test_device_check_says_when_there_is_no_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import device_check

    assert device_check.main(["--scenes", "1", "--size", "64"]) == 1
    assert "CUDA is not available" in capsys.readouterr().err


def test_quality_refuses_zero_passes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        quality.main(["--passes", "0", "--no-model"])
    assert e.value.code == 2
    assert "--passes must be 1 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        quality.main(["--glow-cap", "-1", "--no-model"])
    assert e.value.code == 2
    assert "--glow-cap must be 0 or more" in capsys.readouterr().err


def _grainy_field(seed: int = 3) -> tuple[np.ndarray, np.ndarray, int]:
    """(original, starless, stars) in [0, 1]: 24 stars on clumpy (correlated) grain."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    grain = ndimage.gaussian_filter(rng.standard_normal((160, 160)), 1.5)
    bg = 0.2 + 0.015 * grain / grain.std()
    yy, xx = np.mgrid[0:160, 0:160]
    stars = np.zeros_like(bg)
    for x, y in rng.uniform(12, 148, (24, 2)):
        stars += 0.6 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
    starless = np.repeat(bg[None], 3, 0).astype(np.float32)
    return np.clip(starless + stars[None], 0, 1).astype(np.float32), starless, 24


def test_real_frames_counts_stars_not_grain() -> None:
    from benchmarks.real_frames import stars_left

    original, starless, n_stars = _grainy_field()
    seen, ((gone, flux_gone), (kept, flux_kept)) = stars_left(original, [starless, original])
    # the clumpy grain is not taken for stars: the pixel noise times sqrt(pixels) would be
    assert n_stars - 4 <= seen <= n_stars
    assert gone == 0 and flux_gone < 0.05
    assert kept == seen and flux_kept == pytest.approx(1.0)


def test_real_frames_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import real_frames

    original, starless, _ = _grainy_field()
    for name, img in (("o.png", original), ("s.png", starless)):
        Image.fromarray((img.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(
            tmp_path / name
        )
    assert real_frames.main([str(tmp_path / "o.png"), str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "| o.png |" in out and "| 0 | 0.00 |" in out
    noise = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "small.png")
    assert real_frames.main([str(tmp_path / "o.png"), str(tmp_path / "small.png")]) == 2
    assert "small.png: shape" in capsys.readouterr().err


def test_upsample_gain_rules() -> None:
    from benchmarks import upsample_gain as ug

    rows = ug.scene_gains(_tiny_model(), [9_000_001, 9_000_002], 64)
    assert len(rows) == 2 and all(math.isfinite(r.psnr_db) for r in rows)
    made = [
        ug.SceneGain(1, 1.2, 1.0, 20.0, 26.0),  # tiny stars: upsampling helps
        ug.SceneGain(2, 5.0, 3.5, 30.0, 28.0),  # bloated stars: it hurts
    ]
    means = ug.rule_means(made)
    assert means["never"] == 25.0 and means["always"] == 27.0
    assert means["best per scene"] == 28.0 == means["width < 2 px"]
    with pytest.raises(ValueError, match="no scenes"):
        ug.rule_means([])


def test_benchmark_real_only_screen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--real-only: the real pairs alone, no synthetic scene drawn, no seam score."""
    _write_real_pair(tmp_path / "pairs")
    results = quality.run_benchmark(
        _tiny_model(),
        model_label="tiny random model",
        real_dir=tmp_path / "pairs",
        tile_options=quality.TileOptions(tile_px=32, overlap_px=8, device="cpu"),
        synthetic=False,
    )
    assert "synthetic" not in results
    assert set(results["real"]["overall"]) == {"input", "classical", "model"}
    assert results["model"]["seam_score"] is None and results["model"]["macs_per_px"] > 0
    text = quality.render_markdown(results)
    assert "Synthetic" not in text and "real_0" in text and "not measured" in text
    with pytest.raises(ValueError, match="nothing to measure"):
        quality.run_benchmark(None, model_label="x", real_dir=None, synthetic=False)

    out = tmp_path / "out"
    argv = ["--no-model", "--real-only", "--real-pairs", str(tmp_path / "pairs")]
    assert quality.main([*argv, "--out", str(out), "--no-previews"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["quality_real.json", "quality_real.md"]
    with pytest.raises(SystemExit):
        quality.main(["--real-only", "--no-real"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality.main(["--no-model", "--real-only", "--real-pairs", str(tmp_path / "none")])
    assert "none/original: no such directory (--real-pairs)" in capsys.readouterr().err


def test_finish_sweep_parses_settings() -> None:
    from benchmarks.finish_sweep import parse_setting
    from starnet_core.options import (
        CoreFillOptions,
        ProtectOptions,
        RemnantOptions,
        SkyColourOptions,
        SpikeOptions,
    )

    defaults = parse_setting("")
    assert defaults == {
        "protect": ProtectOptions(),
        "sky_colour": SkyColourOptions(),
        "core_fill": CoreFillOptions(),
        "spikes": SpikeOptions(),
        "remnants": RemnantOptions(),
    }
    s = parse_setting("core_fill.clip_level=0.8, protect.dilate_px=1,core_fill.grain=false")
    assert s["core_fill"] == CoreFillOptions(clip_level=0.8, grain=False)
    assert s["protect"] == ProtectOptions(dilate_px=1)
    assert s["sky_colour"] == SkyColourOptions()
    off = parse_setting("remnants.enabled=false,remnants.sigma_px=1.5")
    assert off["remnants"] == RemnantOptions(enabled=False, sigma_px=1.5)
    for bad, match in (
        ("core_fill.clip_level", "expected section.field=value"),
        ("fill.clip_level=0.8", "unknown section 'fill'"),
        ("core_fill.level=0.8", "core_fill has no field 'level'"),
        ("protect.dilate_px=1.5", "protect.dilate_px takes a int"),
        ("core_fill.grain=maybe", "takes true or false"),
        ("core_fill.clip_level=0.2", "clip_level must be a number in"),  # the options' check
    ):
        with pytest.raises(ValueError, match=match):
            parse_setting(bad)


def test_finish_sweep_scores_settings_on_development_scenes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks import finish_sweep

    weights = tmp_path / "tiny.safetensors"
    save_weights(_tiny_model(), weights, version="0.0.1-test")
    code = finish_sweep.main(
        ["--weights", str(weights), "--mix", "default", "--scenes", "2", "protect.enabled=false"]
    )
    out = capsys.readouterr().out
    assert code == 0 and "seeds 6,000,000-6,000,001" in out
    rows = [line for line in out.splitlines() if line.startswith("| defaults |")]
    off = [line for line in out.splitlines() if line.startswith("| protect.enabled=false |")]
    assert len(rows) == 1 and len(off) == 1
    assert rows[0] != off[0]  # protection changes the untrained network's output
    # the defaults' row is the benchmark's own scoring of the pipeline's defaults
    cases = finish_sweep.dev_cases("default", finish_sweep.DEV_SEEDS[:2])
    model = _tiny_model()
    outs = [remove_stars(model, c.original, quality.TileOptions()) for c in cases]
    direct = finish_sweep.score(cases, outs, finish_sweep.parse_setting(""))
    assert f"| defaults | {direct['psnr']:.3f} | {direct['bg']:.2f} |" in rows[0]
    with pytest.raises(SystemExit):
        finish_sweep.main(["--scenes", "0"])
    assert "--scenes must be 1 to 48" in capsys.readouterr().err
