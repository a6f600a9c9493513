"""Prefect test fixtures: one temporary Prefect API for the whole session.

Requested explicitly (not autouse) so that test files which never run a flow do
not pay the 8-10 s start of the harness. ``PREFECT_HOME`` is temporary: cached
task results live there and would leak between runs otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("prefect-home")
    saved = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    try:
        with (
            temporary_settings({PREFECT_HOME: str(home), PREFECT_SERVER_ANALYTICS_ENABLED: False}),
            # ~10 s on idle cores; 80 s measured beside a training run and five test runs
            prefect_test_harness(server_startup_timeout=180),
        ):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def write_fits(path: Path, seed: int = 0, size_px: int = 64) -> Path:
    """A small linear mono star field as float32 FITS (written in place, not atomically)."""
    import numpy as np
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    data = rng.normal(100.0, 2.0, (size_px, size_px)).astype(np.float32)
    yy, xx = np.mgrid[:size_px, :size_px]
    for _ in range(6):
        x, y = rng.uniform(4, size_px - 4, 2)
        data += 3000.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / 2.0).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(data, header=fits.Header({"OBJECT": f"test {seed}"})).writeto(path)
    return path


def save_tiny_model(path: Path, version: str, seed: int = 0) -> str:
    """A tiny random-weights generator (multiple of 4 px) saved as safetensors; its sha256."""
    import torch

    from starnet_core.model import ModelConfig, StarNetUNet, save_weights

    torch.manual_seed(seed)
    model = StarNetUNet(ModelConfig(widths=(4, 8), blocks=(1, 1), expand=1))
    return save_weights(model, path, version=version)


@dataclass(frozen=True)
class PipelineEnv:
    """A data folder, a tiny model and a config.yaml pointing at both."""

    root: Path
    config: str
    weights: Path
    settings: Any

    @property
    def incoming(self) -> Path:
        return self.root / "data" / "incoming"

    @property
    def outputs(self) -> Path:
        return self.root / "data" / "outputs"

    @property
    def training(self) -> Path:
        return self.root / "data" / "training"


@pytest.fixture
def pipeline_env(tmp_path: Path) -> PipelineEnv:
    import yaml

    from flows.settings import load_settings

    weights = tmp_path / "models" / "tiny-a.safetensors"
    weights.parent.mkdir()
    save_tiny_model(weights, "tiny-a")
    raw = {
        "data_dir": str(tmp_path / "data"),
        "inference": {"weights": str(weights), "device": "cpu", "tile_px": 64, "overlap_px": 8},
        "prefect": {"gpu_limit_name": "starnet-gpu-test", "retrain_limit_name": "retrain-test"},
        "watch": {"stable_s": 0.2, "poll_s": 0.05},
        "retrain": {
            "steps": 2, "batch_size": 2, "crop_px": 32, "pool_size": 2, "threads": 1,
            "eval_scenes": 1, "eval_size_px": 64, "promote": "always",
        },
    }  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return PipelineEnv(tmp_path, str(config), weights, load_settings(config))
