"""Model invariants (timm style): shapes, gradients, weights I/O, compute budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from starnet_core.model import (
    ModelConfig,
    PatchDiscriminator,
    StarNetUNet,
    average_generators,
    load_model,
    load_weights,
    macs_per_pixel,
    save_weights,
    width_code,
    with_width_conditioning,
)

TINY = ModelConfig(widths=(8, 16), blocks=(1, 1))

# StarNet v1 spends ~92 kMAC per output pixel; the design asks for at least 20x less.
STARNET_V1_MAC_PER_PX = 92_000


def test_default_compute_is_20x_below_starnet_v1() -> None:
    mac = macs_per_pixel(StarNetUNet())
    assert mac * 20 <= STARNET_V1_MAC_PER_PX, mac


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (128, 32)])
def test_shape_preserved_and_finite(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    m = StarNetUNet(TINY).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = m(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


def test_rejects_size_not_multiple() -> None:
    m = StarNetUNet(TINY)
    with pytest.raises(ValueError, match="multiple of 4"):
        m(torch.rand(1, 3, 30, 32))


def test_starts_near_identity() -> None:
    # the near-zero head makes an untrained net change little: training starts from "no harm"
    torch.manual_seed(0)
    m = StarNetUNet().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert (m(x) - x).abs().max() < 0.05


def test_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    m = StarNetUNet(TINY)
    d = PatchDiscriminator(widths=(8, 16))
    x = torch.rand(2, 3, 32, 32)
    out = m(x)
    logits, feats = d(x, out)
    (out.mean() + logits.mean() + sum(f.mean() for f in feats)).backward()
    for name, p in list(m.named_parameters()) + list(d.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    m = StarNetUNet(TINY).eval()
    digest = save_weights(m, tmp_path / "w.safetensors", version="1.2.3")
    m2, info = load_weights(tmp_path / "w.safetensors", expected_sha256=digest)
    assert info.version == "1.2.3" and info.config == TINY and info.sha256 == digest
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    assert load_model(tmp_path / "w.safetensors")[1].sha256 == digest


def test_weights_sha_mismatch_is_refused(tmp_path: Path) -> None:
    save_weights(StarNetUNet(TINY), tmp_path / "w.safetensors", version="1")
    with pytest.raises(ValueError, match="does not match the expected"):
        load_weights(tmp_path / "w.safetensors", expected_sha256="0" * 64)


def test_bad_weight_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_weights(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="junk.safetensors: not a safetensors file"):
        load_weights(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "other"})
    with pytest.raises(ValueError, match="foreign.safetensors: metadata format"):
        load_weights(foreign)
    wrong = tmp_path / "wrong.safetensors"
    meta = {"format": "starnet-unet/1", "config": json.dumps({"widths": [8, 16], "blocks": [1, 1]})}
    save_file({"stem.weight": torch.zeros(1)}, str(wrong), metadata=meta)
    with pytest.raises(ValueError, match="do not match the architecture"):
        load_weights(wrong)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="equally long"):
        ModelConfig(widths=(8, 16), blocks=(1,))
    with pytest.raises(ValueError, match="kernel_px must be odd"):
        ModelConfig(kernel_px=4)


def test_ship_weights_writes_manifest_verified_on_load(tmp_path: Path, monkeypatch) -> None:
    import starnet_core.model as model_mod

    monkeypatch.setattr(model_mod, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(model_mod, "MANIFEST", tmp_path / "manifest.json")
    with pytest.raises(FileNotFoundError, match="no trained weights are shipped"):
        load_model(None)
    path = model_mod.ship_weights(StarNetUNet(TINY), "9.9.9")
    assert path.name == "starnet-9.9.9.safetensors"
    _, info = load_model(None)
    assert info.version == "9.9.9"
    path.write_bytes(path.read_bytes()[:-1] + b"x")  # corrupt the shipped file
    with pytest.raises(ValueError, match="does not match the expected"):
        load_model(None)


def _randomised(seed: int, config: ModelConfig = TINY) -> StarNetUNet:
    torch.manual_seed(seed)
    m = StarNetUNet(config)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p))
    return m


def test_average_generators_is_the_weighted_mean_of_the_parameters() -> None:
    a, b = _randomised(1), _randomised(2)
    mean = average_generators([a, b])
    quarter = average_generators([a, b], [0.75, 0.25])
    for k, v in mean.state_dict().items():
        va, vb = a.state_dict()[k], b.state_dict()[k]
        assert torch.allclose(v, (va + vb) / 2, atol=1e-6), k
        assert torch.allclose(quarter.state_dict()[k], 0.75 * va + 0.25 * vb, atol=1e-6), k
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():  # all of a with share 1: the same network
        assert torch.equal(average_generators([a, b], [1.0, 0.0])(x), a.eval()(x))
    assert not mean.training


def test_average_generators_refuses_what_cannot_be_averaged() -> None:
    a = _randomised(1)
    with pytest.raises(ValueError, match="another architecture"):
        average_generators([a, _randomised(2, ModelConfig(widths=(8, 24), blocks=(1, 1)))])
    with pytest.raises(ValueError, match="sum to 1"):
        average_generators([a, a], [0.7, 0.7])
    with pytest.raises(ValueError, match="sum to 1"):
        average_generators([a, a], [1.5, -0.5])
    with pytest.raises(ValueError, match="2 shares for 3 models"):
        average_generators([a, a, a], [0.5, 0.5])
    with pytest.raises(ValueError, match="at least two"):
        average_generators([a])


def test_cli_soup_writes_the_average_and_refuses_bad_input(tmp_path: Path, capsys) -> None:
    from flows.cli import main

    a, b = _randomised(1), _randomised(2)
    save_weights(a, tmp_path / "a.safetensors", version="1.0.0")
    save_weights(b, tmp_path / "b.safetensors", version="1.1.0")
    out = tmp_path / "soup.safetensors"
    args = ["soup", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
    assert main([*args, "--out", str(out), "--version", "1.2.0"]) == 0
    soup, info = load_weights(out)
    assert info.version == "1.2.0" and "0.5 x weights a.safetensors" in info.metadata["soup"]
    for k, v in soup.state_dict().items():
        assert torch.allclose(v, (a.state_dict()[k] + b.state_dict()[k]) / 2, atol=1e-6)
    capsys.readouterr()
    (tmp_path / "bad.safetensors").write_bytes(b"not a model")
    assert (
        main(["soup", str(out), str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "x")])
        == 2
    )
    assert "bad.safetensors" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "a.safetensors")]) == 2
    assert "would overwrite one of its inputs" in capsys.readouterr().err
    save_weights(
        _randomised(3, ModelConfig(widths=(8, 24), blocks=(1, 1))),
        tmp_path / "w.st",
        version="2.0.0",
    )
    assert main(["soup", str(out), str(tmp_path / "w.st"), "--out", str(tmp_path / "z")]) == 2
    assert "w.st: another architecture than" in capsys.readouterr().err
    assert main([*args, "--mix", "0.9", "0.9", "--out", str(tmp_path / "y")]) == 2
    assert "sum to 1" in capsys.readouterr().err
    assert not any((tmp_path / n).exists() for n in ("x", "y", "z"))


def test_width_conditioned_model_starts_as_the_model_it_was_made_from(tmp_path: Path) -> None:
    torch.manual_seed(2)
    base = StarNetUNet(TINY).eval()
    cond = with_width_conditioning(base).eval()
    assert cond.config.width_cond and not cond.training
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(cond(x, torch.tensor([0.8, 5.0])), base(x))
    with pytest.raises(ValueError, match="already conditioned"):
        with_width_conditioning(cond)
    # it needs one width per image
    for bad in (None, torch.tensor([1.0])):
        with pytest.raises(ValueError, match="conditioned on the star width"):
            cond(x, bad)
    # once its FiLM weights move, the width changes the output; round-trips through a file
    with torch.no_grad():
        for name, p in cond.named_parameters():
            if name.endswith(".film.weight"):
                p.normal_(std=0.05)
        a, b = cond(x, torch.tensor([1.0, 1.0])), cond(x, torch.tensor([4.0, 4.0]))
    assert (a - b).abs().max() > 1e-6  # a fresh net is near the identity: small, not zero
    digest = save_weights(cond, tmp_path / "c.safetensors", version="0.0.1")
    again, info = load_weights(tmp_path / "c.safetensors", expected_sha256=digest)
    assert info.config.width_cond
    with torch.no_grad():
        assert torch.equal(again(x, torch.tensor([1.0, 4.0])), cond(x, torch.tensor([1.0, 4.0])))
    # the FiLM layers cost nothing per pixel that the MAC count sees
    assert macs_per_pixel(cond) == macs_per_pixel(base)


def test_one_width_per_batch_folds_film_into_the_depthwise_conv() -> None:
    # at inference every tile of a frame shares its width: the FiLM scale and shift are
    # folded into the depthwise conv (as fast as an unconditioned block); the result is
    # the unfolded one's, with or without the batch sharing a width, and for training
    torch.manual_seed(4)
    cond = with_width_conditioning(StarNetUNet(TINY)).eval()
    with torch.no_grad():
        for name, p in cond.named_parameters():
            if name.endswith(".film.weight"):
                p.normal_(std=0.05)
            elif name.endswith("scale"):
                p.fill_(0.5)  # blocks that matter, so the FiLM terms show in the output
    x = torch.rand(3, 3, 32, 32)
    for widths in (torch.full((3,), 2.5), torch.tensor([0.9, 2.5, 6.0])):
        unfolded = cond(x, widths)  # gradients on: the plain path
        with torch.inference_mode():
            folded = cond(x, widths)
        torch.testing.assert_close(folded, unfolded.detach(), rtol=1e-5, atol=1e-6)
        assert (unfolded.detach() - cond(x, torch.full((3,), 1.8)).detach()).abs().max() > 1e-4


def test_width_code_is_a_clipped_log_ratio() -> None:
    code = width_code(torch.tensor([1.8, 3.6, 0.9, 1e-6, 1e6]))[:, 0]
    assert code.tolist() == pytest.approx([0.0, 32.0, -32.0, -80.0, 80.0])


def test_old_weights_metadata_reads_as_unconditioned() -> None:
    raw = json.loads(TINY.to_json())
    del raw["width_cond"]
    assert ModelConfig.from_json(json.dumps(raw)) == TINY


def test_weights_and_checkpoints_are_fsynced_before_and_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut after the rename must not leave an empty checkpoint (the rename can
    reach the disk before the data): the file is fsynced, then its folder."""
    import os

    from starnet_core import model as model_module

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(model_module.os, "fsync", fsync)
    path = tmp_path / "w.safetensors"
    model_module.write_safetensors({"a": torch.zeros(3)}, path, {"k": "v"})
    assert synced == [str(tmp_path / ".w.safetensors.tmp"), str(tmp_path)]
    assert path.exists() and not (tmp_path / ".w.safetensors.tmp").exists()
