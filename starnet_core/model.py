"""The star-removal generator and its patch discriminator.

The generator is a residual encoder-decoder (U-Net family, StarNet lineage):
it predicts the star layer and returns ``input - stars``. To keep compute per
pixel small (StarNet v1 spends ~92 kMAC per pixel) it works at half
resolution after a lossless pixel-unshuffle, uses depthwise-separable residual
blocks (NAFNet / MobileNet style), adds skips instead of concatenating, and ends
with one cheap full-resolution 3x3 refinement of the star layer.

Arrays: ``(B, 3, H, W)`` float32 stretched images in [0, 1]. ``H`` and ``W``
must be multiples of ``model.multiple``; :mod:`starnet_core.tiling` pads to it.

A generator built with ``ModelConfig.width_cond`` also takes the frame's typical
star half-width (``starnet_core.classical.typical_star_hwhm``, one value per
image): every block scales and shifts its hidden channels by a learnt function
of it (FiLM, Perez et al. 2018). A soft blob three times wider than the frame's
stars is a galaxy; the same blob in a frame of bloated stars is a star. Without
it the network must guess the frame's seeing from what its receptive field
shows, and learns to take away any compact blob.

Weights are stored as ``safetensors`` with the :class:`ModelConfig` and the
version in the metadata; loading never unpickles anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

WEIGHTS_FORMAT = "starnet-unet/1"
WEIGHTS_DIR = Path(__file__).parent / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the generator; saved in the weights' metadata."""

    in_channels: int = 3
    widths: tuple[int, ...] = (16, 32, 64, 128, 160)  # level 0 runs at H/2
    blocks: tuple[int, ...] = (1, 1, 2, 1, 3)  # residual blocks per encoder level
    expand: int = 2  # channel expansion inside a block
    kernel_px: int = 3  # depthwise kernel size
    width_cond: bool = False  # conditioned on the frame's typical star half-width

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.blocks) or not self.widths:
            raise ValueError(
                f"widths {self.widths} and blocks {self.blocks} must be non-empty and equally long"
            )
        if self.kernel_px % 2 != 1:
            raise ValueError(f"kernel_px must be odd, got {self.kernel_px}")

    @property
    def multiple(self) -> int:
        """Input sizes must be multiples of this (unshuffle x2, then a /2 per level)."""
        return 2 ** len(self.widths)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        raw = json.loads(text)
        d = cls()  # missing keys take today's defaults
        return cls(
            in_channels=int(raw.get("in_channels", d.in_channels)),
            widths=tuple(int(w) for w in raw.get("widths", d.widths)),
            blocks=tuple(int(b) for b in raw.get("blocks", d.blocks)),
            expand=int(raw.get("expand", d.expand)),
            kernel_px=int(raw.get("kernel_px", d.kernel_px)),
            width_cond=bool(raw.get("width_cond", d.width_cond)),
        )


class LayerNorm2d(nn.Module):
    """Per-pixel layer norm over channels: independent of tile size and position."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        x = (x - mu) / torch.sqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


# Star width conditioning: the network reads log2(hwhm / WIDTH_REF_PX) (WIDTH_REF_PX about
# the median typical half-width of the generator's crops), clipped to +-WIDTH_RANGE, times
# WIDTH_GAIN. The gain is the FiLM weights' learning rate multiplier: an Adam update moves
# a weight by about the learning rate whatever its gradient, and its effect scales with
# its input. At a fine-tune's 2e-5 and a gain of 8 they had moved by at most 0.005 after
# 2,800 steps (gamma 0.04 for stars twice as wide); at 32 they still random-walked, to
# 0.006 at step 13,186 (run PC, BENCHMARKS.md "Eighteenth session").
WIDTH_REF_PX = 1.8
WIDTH_RANGE = 2.5
WIDTH_GAIN = 32.0


def width_code(hwhm_px: torch.Tensor) -> torch.Tensor:
    """(B,) typical star half-widths in px -> (B, 1) the FiLM layers' input."""
    ratio = torch.log2(hwhm_px.clamp(min=1e-3) / WIDTH_REF_PX).clamp(-WIDTH_RANGE, WIDTH_RANGE)
    return (WIDTH_GAIN * ratio)[:, None]


class Block(nn.Module):
    """x + pw(act(film(dw(pw(norm(x)))))): a depthwise-separable residual block; ``film``
    (width-conditioned blocks only) scales and shifts the hidden channels per image."""

    def __init__(self, channels: int, expand: int, kernel_px: int, cond: bool = False) -> None:
        super().__init__()
        hidden = channels * expand
        self.norm = LayerNorm2d(channels)
        self.pw1 = nn.Conv2d(channels, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, kernel_px, padding=kernel_px // 2, groups=hidden)
        self.pw2 = nn.Conv2d(hidden, channels, 1)
        # Start each block as the identity (scale 0) so the deep net trains stably;
        # small rather than zero so every parameter gets a gradient from step one.
        self.scale = nn.Parameter(torch.full((channels,), 1e-2))
        # zero: a conditioned block starts as the unconditioned one (fine-tunes from it)
        self.film = nn.Linear(1, 2 * hidden, bias=False) if cond else None
        if self.film is not None:
            nn.init.zeros_(self.film.weight)

    def forward(self, x: torch.Tensor, code: torch.Tensor | None = None) -> torch.Tensor:
        h = self.pw1(self.norm(x))
        if self.film is None:
            h = self.dw(h)
        else:
            assert code is not None  # StarNetUNet.star_layer checks it
            gamma, beta = self.film(code).chunk(2, dim=1)
            if not torch.is_grad_enabled() and bool((code == code[:1]).all()):
                # one width for the whole batch (every tile of one frame): fold the
                # per-channel scale and shift into the depthwise conv, which costs as
                # much as the unconditioned block (two full-size elementwise passes
                # less: about a fifth of the network's time on a CPU)
                scale = 1 + gamma[0]
                bias = beta[0] if self.dw.bias is None else self.dw.bias * scale + beta[0]
                weight = self.dw.weight * scale[:, None, None, None]
                h = F.conv2d(h, weight, bias, padding=self.dw.padding, groups=self.dw.groups)
            else:
                h = self.dw(h) * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        y = self.pw2(F.gelu(h))
        return x + y * self.scale[:, None, None]


class StarNetUNet(nn.Module):
    """Residual encoder-decoder: ``starless = x - stars(x)``. (B,3,H,W) -> (B,3,H,W)."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        self.in_channels = c.in_channels
        self.multiple = c.multiple
        w = c.widths
        self.stem = nn.Conv2d(4 * c.in_channels, w[0], 3, padding=1)
        cond = c.width_cond
        self.enc = nn.ModuleList(
            nn.ModuleList(Block(w[i], c.expand, c.kernel_px, cond) for _ in range(c.blocks[i]))
            for i in range(len(w))
        )
        self.down = nn.ModuleList(nn.Conv2d(w[i], w[i + 1], 2, stride=2) for i in range(len(w) - 1))
        self.up = nn.ModuleList(nn.Conv2d(w[i + 1], 4 * w[i], 1) for i in range(len(w) - 1))
        self.dec = nn.ModuleList(
            Block(w[i], c.expand, c.kernel_px, cond) for i in range(len(w) - 1)
        )
        self.head = nn.Conv2d(w[0], 4 * c.in_channels, 1, bias=True)
        # A near-zero head starts the net near the identity (no stars removed, background
        # untouched) instead of at random colour shifts it must first unlearn.
        with torch.no_grad():
            self.head.weight.normal_(std=1e-3)
            self.head.bias.zero_()  # type: ignore[union-attr]  # bias=True above
        # Full-resolution refinement of the star layer from (input, coarse stars): the
        # half-resolution trunk cannot by itself keep the four pixel-shuffle phases
        # consistent (checkerboard on smooth background) nor follow 1 px stars exactly.
        # Starts as the identity on the coarse stars.
        c_in = c.in_channels
        self.refine = nn.Conv2d(2 * c_in, c_in, 3, padding=1)
        with torch.no_grad():
            self.refine.weight.zero_()
            self.refine.bias.zero_()  # type: ignore[union-attr]  # Conv2d default bias=True
            for ch in range(c_in):
                self.refine.weight[ch, c_in + ch, 1, 1] = 1.0

    def star_layer(self, x: torch.Tensor, hwhm_px: torch.Tensor | None = None) -> torch.Tensor:
        """The predicted star layer (B,3,H,W); may be negative where the net is unsure.

        ``hwhm_px``: (B,) each image's typical star half-width in px, needed by (and
        only by) a width-conditioned model.
        """
        b, _, h, wd = x.shape
        if h % self.multiple or wd % self.multiple:
            raise ValueError(
                f"input size {h}x{wd} must be a multiple of {self.multiple}; pad it first"
            )
        code = None
        if self.config.width_cond:
            if hwhm_px is None or hwhm_px.shape != (b,):
                got = None if hwhm_px is None else tuple(hwhm_px.shape)
                raise ValueError(
                    f"this model is conditioned on the star width: pass hwhm_px of shape "
                    f"({b},), got {got}"
                )
            code = width_code(hwhm_px.to(x.device, x.dtype))
        y = self.stem(F.pixel_unshuffle(x, 2))
        skips = []
        for i, enc in enumerate(self.enc):
            for block in enc.children():
                y = block(y, code)
            if i < len(self.down):
                skips.append(y)
                y = self.down[i](y)
        for i in reversed(range(len(self.up))):
            y = F.pixel_shuffle(self.up[i](y), 2) + skips[i]
            y = self.dec[i](y, code)
        coarse = F.pixel_shuffle(self.head(y), 2)
        return self.refine(torch.cat([x, coarse], 1))

    def forward(self, x: torch.Tensor, hwhm_px: torch.Tensor | None = None) -> torch.Tensor:
        return x - self.star_layer(x, hwhm_px)


class _SamePadConv(nn.Conv2d):
    """Stride-1 conv with an even kernel and explicit asymmetric 'same' padding
    (what ``padding="same"`` does, without its per-call copy warning)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size[0]
        return super().forward(F.pad(x, ((k - 1) // 2, k // 2, (k - 1) // 2, k // 2)))


class PatchDiscriminator(nn.Module):
    """Conditional patch discriminator (pix2pix) that also yields feature maps.

    Input: original and candidate starless, (B,3,H,W) each. Output: patch
    logits and the list of intermediate features, which the generator's
    perceptual loss compares (Perceptual Adversarial Networks: no pretrained VGG).
    """

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (32, 64, 128, 192)) -> None:
        super().__init__()
        layers = []
        prev = 2 * in_channels
        for i, wd in enumerate(widths):
            stride = 2 if i < len(widths) - 1 else 1
            layers.append(
                nn.Sequential(
                    nn.Conv2d(prev, wd, 4, stride=2, padding=1)
                    if stride == 2
                    else _SamePadConv(prev, wd, 4),
                    nn.LeakyReLU(0.2),
                )
            )
            prev = wd
        self.features = nn.ModuleList(layers)
        self.head = nn.Conv2d(prev, 1, 3, padding=1)

    def forward(
        self, original: torch.Tensor, candidate: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        y = torch.cat([original, candidate], 1)
        feats = []
        for layer in self.features:
            y = layer(y)
            feats.append(y)
        return self.head(y), feats


@dataclass
class ModelInfo:
    """What the weights file says about itself."""

    config: ModelConfig
    version: str
    sha256: str
    metadata: dict[str, str] = field(default_factory=dict)


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries on POSIX) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_safetensors(
    tensors: dict[str, torch.Tensor], path: Path, meta: dict[str, str], mode: int | None = None
) -> None:
    """Write ``tensors`` to ``path`` as safetensors through a temporary file beside it,
    fsynced, renamed into place, and the folder fsynced (a reader never sees half a file,
    and a power cut after the rename does not leave an empty one; ``mode``: its
    permissions).

    Raises ``OSError`` naming ``path`` when it cannot be written (its folder missing or
    not writable, a folder in its place); the temporary file is never left behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        if mode is not None:
            tmp.chmod(mode)
        _fsync(tmp)
        tmp.replace(path)
        if os.name == "posix":
            _fsync(path.parent)
    except BaseException as e:  # Ctrl-C included: no partial temporary file stays
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not isinstance(e, OSError | SafetensorError):
            raise
        # safetensors reports I/O failures as its own error type ("... (os error 2) at
        # path <its own temporary file>"), the rename names the temporary file: both
        # become an OSError naming the file
        code = e.errno if isinstance(e, OSError) else None
        if code is None and (found := re.search(r"\(os error (\d+)\)", str(e))):
            code = int(found.group(1))
        if code is None:
            raise OSError(f"{path}: cannot write: {e}") from e
        raise OSError(code, os.strerror(code), str(path)) from e


def save_weights(
    model: StarNetUNet, path: str | Path, *, version: str, extra: dict[str, str] | None = None
) -> str:
    """Write the generator as safetensors (config + version in metadata); returns sha256.

    Raises ``OSError`` naming ``path`` when it cannot be written (its folder missing or
    not writable, a folder in its place); the temporary file is never left behind.
    """
    path = Path(path)
    meta = {"format": WEIGHTS_FORMAT, "config": model.config.to_json(), "version": version}
    meta.update(extra or {})
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # a model file is for every user of the installation to read
    write_safetensors(tensors, path, meta, mode=0o644)
    return sha256_of(path)


def load_weights(
    path: str | Path, *, expected_sha256: str | None = None
) -> tuple[StarNetUNet, ModelInfo]:
    """Build the generator from a safetensors file (never unpickles).

    Raises ``ValueError`` naming the file when it is not a starnet weights file,
    its sha256 differs from ``expected_sha256``, or tensors do not fit the config.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: weights file not found")
    digest = sha256_of(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(
            f"{path}: sha256 {digest} does not match the expected {expected_sha256}; "
            "the file is corrupt or not the model it claims to be"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a safetensors file ({e})") from e
    if meta.get("format") != WEIGHTS_FORMAT:
        raise ValueError(
            f"{path}: metadata format {meta.get('format')!r}, expected {WEIGHTS_FORMAT!r}"
        )
    config = ModelConfig.from_json(meta["config"])
    model = StarNetUNet(config)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{path}: tensors do not match the architecture in its metadata: {e}"
        ) from e
    model.eval()
    return model, ModelInfo(config, meta.get("version", "unknown"), digest, meta)


def average_generators(
    models: list[StarNetUNet],
    mix: list[float] | None = None,
    names: list[str] | None = None,
) -> StarNetUNet:
    """A new generator whose parameters are the ``mix``-weighted mean of ``models``' (a
    "model soup", Wortsman et al. 2022): for runs fine-tuned from one ancestor, the mean
    lands between their trade-offs at no inference cost.

    ``mix`` defaults to equal shares; it must hold one finite share >= 0 per model,
    summing to 1. Raises ``ValueError`` when the models differ in architecture, naming
    the model by ``names`` (e.g. their files; default "model 1", "model 2", ...).
    """
    if len(models) < 2:
        raise ValueError(f"averaging needs at least two models, got {len(models)}")
    shares = [1.0 / len(models)] * len(models) if mix is None else [float(w) for w in mix]
    if len(shares) != len(models):
        raise ValueError(f"{len(shares)} shares for {len(models)} models")
    if not all(math.isfinite(w) and w >= 0 for w in shares) or abs(sum(shares) - 1) > 1e-6:
        raise ValueError(f"shares must be finite, >= 0 and sum to 1, got {shares}")
    names = names or [f"model {i}" for i in range(1, len(models) + 1)]
    config = models[0].config
    for name, m in zip(names[1:], models[1:], strict=True):
        if m.config != config:
            raise ValueError(
                f"{name}: another architecture than {names[0]} ({m.config} != {config})"
            )
    states = [m.state_dict() for m in models]
    mean = {
        k: sum(w * st[k].double() for w, st in zip(shares, states, strict=True)).to(v.dtype)
        if v.is_floating_point()
        else v.clone()
        for k, v in states[0].items()
    }
    out = StarNetUNet(config)
    out.load_state_dict(mean, strict=True)
    out.eval()
    return out


def film_weights(model: nn.Module) -> list[torch.Tensor]:
    """A width-conditioned generator's FiLM weights, block by block (none: unconditioned)."""
    return [m.film.weight for m in model.modules() if isinstance(m, Block) and m.film is not None]


def with_width_conditioning(model: StarNetUNet) -> StarNetUNet:
    """A width-conditioned copy of an unconditioned generator that computes exactly what
    it does (its FiLM layers start at zero), to fine-tune into using the star width."""
    if model.config.width_cond:
        raise ValueError("the model is already conditioned on the star width")
    out = StarNetUNet(replace(model.config, width_cond=True))
    missing, unexpected = out.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(".film.weight") for k in missing), missing
    out.train(model.training)
    return out


def macs_per_pixel(model: nn.Module, size_px: int = 256) -> float:
    """Multiply-accumulates per output pixel, counted with hooks on every conv."""
    total = 0

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(mod, nn.Conv2d)
        k = mod.kernel_size[0] * mod.kernel_size[1]
        total += out.numel() * (mod.in_channels // mod.groups) * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        # gradients on: the plain path, every conv through its module (without them a
        # conditioned block folds its FiLM terms into a functional depthwise conv)
        with torch.enable_grad():
            x = torch.zeros(1, 3, size_px, size_px)
            cond = isinstance(model, StarNetUNet) and model.config.width_cond
            model(x, torch.full((1,), WIDTH_REF_PX)) if cond else model(x)
    finally:
        for h in handles:
            h.remove()
    return total / (size_px * size_px)


def packaged_weights() -> tuple[Path, str, str]:
    """(path, sha256, version) of the model shipped in the package, from its manifest."""
    if not MANIFEST.exists():
        raise FileNotFoundError(
            f"{MANIFEST}: no trained weights are shipped in this build; pass a weights file "
            "(--weights FILE or inference.weights in config.yaml)"
        )
    raw = json.loads(MANIFEST.read_text(encoding="utf-8"))
    return WEIGHTS_DIR / raw["file"], raw["sha256"], raw["version"]


# The version of weights written without one (``--export``, ``--ship``, ``soup``, kept
# weights): :func:`dev_version` makes it unique to the weights, as the provenance DB
# registers one sha256 per version.
DEV_VERSION = "0.0.0-dev"
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+-]{0,63}")


def parameters_sha256(model: nn.Module) -> str:
    """The sha256 of a model's tensors (names, dtypes, shapes and values, in state-dict
    order): the same for the same weights whatever file metadata they are saved with."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def dev_version(model: nn.Module) -> str:
    """``0.0.0-dev+<first 8 hex of parameters_sha256>``: a version for unversioned
    weights (semver build metadata), unique to them, so two of them never clash in the
    provenance DB's registry (one sha256 per version) or in the weights folder."""
    return f"{DEV_VERSION}+{parameters_sha256(model)[:8]}"


def _holds(path: Path, model: nn.Module) -> bool:
    """Whether the weights file ``path`` holds ``model``'s weights (tensors compared, not
    file bytes: safetensors writes its metadata in no fixed order); an unreadable file
    holds none."""
    try:
        other, _ = load_weights(path)
    except (OSError, ValueError):
        return False
    return parameters_sha256(other) == parameters_sha256(model)


def check_version(version: str) -> None:
    """``ValueError`` unless ``version`` is a plain name that fits a weights file name and
    the registry: 1-64 letters, digits and ``. _ + -``, starting with a letter or digit,
    no ``..`` (``1.2.0``, ``0.0.0-dev+1a2b3c4d``, ``1.0.0+ft.20250101.000000``)."""
    if not _VERSION.fullmatch(version) or ".." in version:
        raise ValueError(
            f"version {version!r}: expected 1-64 letters, digits and . _ + - (no '/', no "
            "'..'), starting with a letter or digit, e.g. 1.2.0"
        )


def ship_weights(model: StarNetUNet, version: str, extra: dict[str, str] | None = None) -> Path:
    """Make ``model`` the packaged default: ``weights/starnet-<version>.safetensors`` and
    the manifest (file, sha256, version) that :func:`load_model` verifies on every load.

    A version is one set of weights: a ``ValueError`` naming the file, and nothing
    written, when ``starnet-<version>.safetensors`` (or the packaged model, when it has
    that version) holds other weights. The same weights again leave that file as it is
    (its sha256 is what a provenance DB registered). An unusable ``version`` is a
    ``ValueError`` too (:func:`check_version`)."""
    check_version(version)
    path = WEIGHTS_DIR / f"starnet-{version}.safetensors"
    packaged = None
    if MANIFEST.exists():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            packaged = packaged_weights()
    taken = path if path.exists() else None
    if taken is None and packaged is not None and packaged[2] == version and packaged[0].exists():
        taken = packaged[0]
    if taken is not None and not _holds(taken, model):
        raise ValueError(
            f"{taken}: model version {version} is packaged with other weights already; "
            "ship these under a new --version (or remove that file first)"
        )
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    if path.exists():  # these very weights: the file stays as it is
        digest = sha256_of(path)
    else:
        digest = save_weights(model, path, version=version, extra=extra)
    manifest = {"file": path.name, "sha256": digest, "version": version}
    tmp = MANIFEST.with_name(f".{MANIFEST.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    tmp.replace(MANIFEST)
    return path


def load_model(weights: str | Path | None = None) -> tuple[StarNetUNet, ModelInfo]:
    """The generator from ``weights``, or the packaged model (sha256-verified) when None."""
    if weights is None:
        path, digest, _ = packaged_weights()
        return load_weights(path, expected_sha256=digest)
    return load_weights(weights)
