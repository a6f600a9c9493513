"""Load the generator from a training checkpoint: to benchmark or average runs before export.

A checkpoint (``starnet_core.train.save_checkpoint``) is one safetensors file
holding the generator (``g.*``), discriminator (``d.*``) and optimizer state,
with the generator's :class:`~starnet_core.model.ModelConfig` as JSON in the
metadata key ``model_config``. Nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from starnet_core.model import WEIGHTS_FORMAT, ModelConfig, StarNetUNet, load_weights

__all__ = ["is_checkpoint", "load_any", "load_generator_from_checkpoint"]

GENERATOR_PREFIX = "g."


def _metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a safetensors file ({e})") from e


def is_checkpoint(path: str | Path) -> bool:
    """True for a training checkpoint, False for an exported weights file."""
    meta = _metadata(Path(path))
    return meta.get("format") != WEIGHTS_FORMAT and "model_config" in meta


def load_generator_from_checkpoint(path: str | Path) -> tuple[StarNetUNet, dict[str, str]]:
    """The generator (eval mode, CPU) and the checkpoint's metadata (``step``, configs).

    Raises ``ValueError`` naming the file when it has no ``model_config``
    metadata, no ``g.*`` tensors, or tensors that do not fit the config.
    """
    path = Path(path)
    meta = _metadata(path)
    if "model_config" not in meta:
        raise ValueError(f"{path}: no 'model_config' in the metadata; not a training checkpoint")
    model = StarNetUNet(ModelConfig.from_json(meta["model_config"]))
    with safe_open(str(path), framework="pt") as f:
        names = [k for k in f.keys() if k.startswith(GENERATOR_PREFIX)]  # noqa: SIM118
        state = {k[len(GENERATOR_PREFIX) :]: f.get_tensor(k) for k in names}
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
        return model, f"checkpoint {path.name} step {meta.get('step', '?')}"
    model, info = load_weights(path)
    return model, f"weights {path.name} version {info.version} sha256 {info.sha256[:12]}"
