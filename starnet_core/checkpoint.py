"""Load the generator from a training checkpoint: to benchmark or average runs before export.

A checkpoint (``starnet_core.train.save_checkpoint``) is one safetensors file
holding the generator (``g.*``), its moving average when the run keeps one
(``ema.*``), the discriminator (``d.*``) and optimizer state, with the
generator's :class:`~starnet_core.model.ModelConfig` as JSON in the metadata
key ``model_config``. Nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from starnet_core.model import WEIGHTS_FORMAT, ModelConfig, StarNetUNet, load_weights

__all__ = [
    "checkpoint_metadata",
    "checkpoint_step",
    "is_checkpoint",
    "load_any",
    "load_generator_from_checkpoint",
]

GENERATOR_PREFIX = "g."
EMA_PREFIX = "ema."  # the generator's moving average (TrainConfig.ema_decay > 0)


def _metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a safetensors file ({e})") from e


def checkpoint_metadata(path: str | Path) -> dict[str, str]:
    """A training checkpoint's metadata (``step``, ``train_config``, ``model_config``).

    Raises ``ValueError`` naming the file when it is missing, not a safetensors file
    (truncated, corrupt) or not a training checkpoint; only its header is read.
    """
    path = Path(path)
    meta = _metadata(path)
    for key in ("step", "model_config"):
        if key not in meta:
            raise ValueError(f"{path}: no {key!r} in the metadata; not a training checkpoint")
    if not meta["step"].isdigit():
        raise ValueError(f"{path}: step {meta['step']!r} in the metadata is not a step number")
    return meta


def checkpoint_step(path: str | Path) -> int:
    """The step a training checkpoint was saved at (see :func:`checkpoint_metadata`)."""
    return int(checkpoint_metadata(path)["step"])


def is_checkpoint(path: str | Path) -> bool:
    """True for a training checkpoint, False for an exported weights file."""
    meta = _metadata(Path(path))
    return meta.get("format") != WEIGHTS_FORMAT and "model_config" in meta


def load_generator_from_checkpoint(
    path: str | Path, ema: bool = True
) -> tuple[StarNetUNet, dict[str, str]]:
    """The generator (eval mode, CPU) and the checkpoint's metadata (``step``, configs,
    and ``weights``: ``ema`` or ``generator``, which tensors were loaded).

    ``ema``: take the generator's moving average when the checkpoint holds one (what a
    run with ``ema_decay`` exports). Raises ``ValueError`` naming the file when it has
    no ``model_config`` metadata, no ``g.*`` tensors, or tensors that do not fit the config.
    """
    path = Path(path)
    meta = _metadata(path)
    if "model_config" not in meta:
        raise ValueError(f"{path}: no 'model_config' in the metadata; not a training checkpoint")
    model = StarNetUNet(ModelConfig.from_json(meta["model_config"]))
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
        prefix = GENERATOR_PREFIX
        if ema and any(k.startswith(EMA_PREFIX) for k in keys):
            prefix = EMA_PREFIX
        state = {k[len(prefix) :]: f.get_tensor(k) for k in keys if k.startswith(prefix)}
    meta["weights"] = "ema" if prefix == EMA_PREFIX else "generator"
    if not state:
        raise ValueError(f"{path}: no generator tensors ({GENERATOR_PREFIX}*) in the checkpoint")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: generator tensors do not match model_config: {e}") from e
    model.eval()
    return model, meta


def load_any(path: str | Path) -> tuple[StarNetUNet, str]:
    """A generator from an exported weights file or a training checkpoint, and a label for it."""
    path = Path(path)
    if is_checkpoint(path):
        model, meta = load_generator_from_checkpoint(path)
        ema = " (moving average)" if meta["weights"] == "ema" else ""
        return model, f"checkpoint {path.name} step {meta.get('step', '?')}{ema}"
    model, info = load_weights(path)
    return model, f"weights {path.name} version {info.version} sha256 {info.sha256[:12]}"
