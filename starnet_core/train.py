"""Training the generator: L1 + adversarial + discriminator-feature perceptual loss.

One loop, readable top to bottom (nanoGPT style). Data is a pool of pairs
(synthetic crops and/or crops of real pairs), refreshed a few crops at a time
so generation never stalls the loop. Everything the run needs to resume —
generator, discriminator, both Adam states, step, config — is written as
safetensors + JSON metadata; nothing is pickled.

Loss terms (BasicSR names):
- ``l_g_pix``: L1 over all pixels plus ``star_weight`` x L1 over star pixels
  (|original - truth| > ``star_threshold``). Stars are 1-3% of the pixels, so
  unweighted L1 sits in the "change nothing" minimum (MODEL_NOTES).
- ``l_g_rel`` (``w_rel``): on the same star pixels, the error over the star's own light
  there, ``|G(x) - y| / (|x - y| + star_threshold)``: about the share of the star left,
  whatever its brightness. Plain L1 weighs a bright star's pixels tens of times a faint
  one's, and the faint stars of sparse fields are what the network leaves most.
- ``l_g_low``: L1 of the 8x8 block means of (output - truth): keeps the
  background level and colour (the failure MODEL_NOTES measured: a model that
  shifts the whole background).
- ``l_g_over`` (``w_over``) and ``l_g_keep`` (``w_galaxy``): L1 where the output is
  darker than the truth, on star-free pixels and on the synthetic crops' galaxies and
  knots (``Scene.keep_mask``), stars on them included.
- ``l_g_anchor`` (``w_anchor``): L1 between the output and a fixed reference model's
  output (the weights the fine-tune started from) on the dense-field crops: a fine-tune
  that learns new cases need not unlearn the dense fields' faint stars (Learning without
  Forgetting, Li & Hoiem 2016, restricted to the crops it guards).
- ``l_g_percep``: L1 between the discriminator's features of (x, G(x)) and
  (x, y): a perceptual loss with no pretrained VGG (Perceptual Adversarial Nets).
- ``l_g_gan``, ``l_d_real``, ``l_d_fake``: pix2pix conditional patch GAN (BCE).
Adversarial and perceptual terms start at ``gan_start_step``: the
discriminator's features mean nothing before it has been trained a while.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import multiprocessing
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from starnet_core.checkpoint import EMA_PREFIX, checkpoint_metadata
from starnet_core.inference import star_hwhm
from starnet_core.model import (
    ModelConfig,
    PatchDiscriminator,
    StarNetUNet,
    dev_version,
    film_weights,
    save_weights,
    write_safetensors,
)
from starnet_core.synthetic import (
    DEFAULT_GLOW_CAP,
    MASK_CHANNELS,
    Mix,
    crop_masks,
    make_pair,
    make_pool,
)
from starnet_core.tiling import memory_format_for, place_model, select_device

if TYPE_CHECKING:
    from starnet_core.imageio import ImageData

log = logging.getLogger(__name__)

Pair = tuple[np.ndarray, np.ndarray]


@dataclass
class TrainConfig:
    """Every knob of a training run; saved with each checkpoint."""

    steps: int = 25000  # total optimizer steps to reach (resumed runs continue to it)
    batch_size: int = 8
    crop_px: int = 128
    lr: float = 5e-4
    lr_min: float = 5e-5  # cosine decay floor
    warmup_steps: int = 200
    pool_size: int = 2000  # synthetic crops held in memory
    refresh_every: int = 50  # steps between pool refreshes
    refresh_count: int = 16  # crops regenerated per refresh
    real_ratio: float = 0.0  # fraction of each batch drawn from file pairs (if any)
    star_weight: float = 20.0
    star_threshold: float = 0.01
    # the star pixels' error relative to the star light there (l_g_rel, see
    # relative_star_error): every star counts by the share of it left, not its flux (0: none)
    w_rel: float = 0.0
    w_lowfreq: float = 10.0  # L1 of the 8x8-block mean error: no global darkening or tint
    # extra L1 where the output is darker than the truth away from stars: with only the
    # star weight, taking away any round glow "in case it is a halo" is cheap, and small
    # galaxies and knots go with the halos
    w_over: float = 5.0
    # ...but only where the original carries no star light at all (|x - y| <= this): the
    # faint wings of stars below star_threshold belong to the star, and penalising their
    # removal taught the net to leave faint stars in place
    over_threshold: float = 0.001
    # extra over-removal weight on the galaxies and knots of synthetic crops (their
    # Scene.keep_mask), stars on top of them included: the net takes small galaxies for
    # bloated stars, and they are nearly all of the held-out background error (0: none)
    w_galaxy: float = 0.0
    # L1 to a reference model's output on dense-field crops (l_g_anchor; 0: none). Every
    # CPU fine-tune of 0.5.0 left more of the dense fields' faint stars than 0.5.0 did
    w_anchor: float = 0.0
    anchor_weights: str = ""  # the reference model's weights file (recorded, for the log)
    # exponential moving average of the generator's weights (BasicSR's ema_decay, e.g.
    # 0.999): what checkpoints are evaluated and exported as; smooths the swings of the
    # adversarial game. 0: none
    ema_decay: float = 0.0
    # the FiLM weights' learning rate as a multiple of ``lr`` (width-conditioned models):
    # at a fine-tune's rate they random-walked (BENCHMARKS.md "Eighteenth session",
    # "Nineteenth session"); trained alone at 10x on galaxy-heavy crops they lowered a
    # held-back loss that shuffled widths raised, on the fine-tunes' own mix they did not,
    # and a fine-tune at 10x fitted the generator better and the real pairs worse
    # ("Twentieth session", benchmarks.film_signal)
    film_lr_mult: float = 1.0
    # train the FiLM weights alone (everything else frozen): what the width adds to a
    # trained conditioned model, without moving what it learnt ("Twentieth session")
    film_only: bool = False
    lowfreq_px: int = 8
    w_pix: float = 1.0
    w_percep: float = 0.1
    w_gan: float = 0.005
    gan_start_step: int = 16000
    # discriminator-only steps (generator frozen) before the generator trains: a fine-tune
    # of exported weights starts with a fresh discriminator whose first verdicts are noise.
    # Not counted in ``steps`` (the time budget, though, runs); repeated if a killed run
    # is restarted
    d_warmup_steps: int = 0
    # the warm-up's Adam rate (pix2pix's): at a fine-tune's 4e-5 a fresh discriminator
    # still answered chance (BCE 0.693) after 200 steps
    d_warmup_lr: float = 2e-4
    # smooth star glow the synthetic truth keeps, in noise sigmas (retouchers differ)
    glow_cap_sigma: float = DEFAULT_GLOW_CAP
    # how often the synthetic crops draw their harder cases (dense fields, spikes, galaxy
    # nuclei); the default is the generator's own mix, the one the benchmark measures
    mix: Mix = field(default_factory=Mix)
    augment_scale: float = 0.3  # probability of a random zoom-in (stars look bigger)
    seed: int = 1234
    log_every: int = 100
    checkpoint_every: int = 500
    # every this many steps (a multiple of checkpoint_every) also keep the generator as
    # weights-<step>.safetensors beside the checkpoint, for a checkpoint average
    # (`starnet soup`); 0: none
    keep_every: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch default
    device: str = "cpu"  # auto, cpu, cuda, cuda:N, mps
    workers: int = 0  # processes generating synthetic crops; 0 = in the training loop
    # wall-clock budget in seconds for the whole train() call (0 = none): building the
    # synthetic pool and the discriminator warm-up spend it too; the run stops when it
    # is spent, and the cosine decay follows the elapsed fraction of what the training
    # loop has left of it instead of the step count
    time_limit_s: float = 0.0
    model: ModelConfig = field(default_factory=ModelConfig)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        """The config :meth:`to_json` wrote (a checkpoint's ``train_config``): keys it does
        not know are left out, keys it lacks (an older checkpoint) take today's defaults.
        Raises ``ValueError`` when it is not such a JSON object."""
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError(f"not a training config object: {text[:60]!r}")
        known = {f.name for f in fields(cls)} - {"mix", "model"}
        kw: dict[str, Any] = {k: v for k, v in raw.items() if k in known}
        mix = raw.get("mix")
        if isinstance(mix, dict):
            names = {f.name for f in fields(Mix)}
            shares: dict[str, Any] = {
                k: tuple(v) if isinstance(v, list) else v for k, v in mix.items() if k in names
            }
            kw["mix"] = Mix(**shares)
        if isinstance(raw.get("model"), dict):
            kw["model"] = ModelConfig.from_json(json.dumps(raw["model"]))
        return cls(**kw)


class WorkersLostError(RuntimeError):
    """A synthetic crop worker process died (killed, out of memory): its pool is broken."""


_WORKERS_LOST = (
    "a synthetic crop worker process died (killed, or out of memory?); its pool is broken"
)


class PairPool:
    """In-memory pool of synthetic pairs (N,3,S,S) with their scenes' masks (N,2,S,S:
    galaxies and knots, dense field; ``synthetic.crop_masks``), refreshed a few at a time.

    With ``workers`` > 0 the crops are generated by that many processes: the
    pool is filled in parallel, and ``refresh`` then swaps in whatever the
    workers finished since the last call, never waiting for them (a GPU eats
    crops faster than one core makes them). Task k's crops are
    ``make_pool(PairPool.task_seed(seed, k))``, reproducible; when they enter the
    pool depends on the workers' timing, so a run with workers is not
    bit-identical from one run to the next.
    """

    CHUNK = 16  # crops per worker task

    @staticmethod
    def task_seed(seed: int, task: int) -> list[int]:
        """The generator seed of worker task ``task``: two words of entropy, so it never
        draws the stream of a single-int seed (the quality benchmark's held-out seeds,
        9,000,001 up; the in-process pool's 1234 + step). ``task + 1``: numpy reads a
        trailing 0 word as absent, and ``[seed, 0]`` would be ``seed`` itself."""
        return [int(seed), task + 1]

    def __init__(
        self,
        size: int,
        crop_px: int,
        seed: int,
        workers: int = 0,
        glow_cap: float = DEFAULT_GLOW_CAP,
        mix: Mix | None = None,
        widths: bool = False,
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.crop_px = crop_px
        self.glow_cap = glow_cap
        self.mix = mix or Mix()
        self.widths = widths
        self.orig = np.empty((size, 3, crop_px, crop_px), np.float32)
        self.clean = np.empty_like(self.orig)
        self.masks = np.empty((size, len(MASK_CHANNELS), crop_px, crop_px), np.uint8)
        # each original's typical star half-width (star_widths; NaN: not measured)
        self.hwhm = np.full(size, np.nan, np.float32)
        self._seed = seed
        self._task = 0
        self._pending: list[Future[tuple[np.ndarray, ...]]] = []
        self._executor: ProcessPoolExecutor | None = None
        t0 = time.perf_counter()
        if workers > 0:
            # spawn, not fork: the parent may already hold CUDA or OpenMP state
            ctx = multiprocessing.get_context("spawn")
            self._executor = ProcessPoolExecutor(
                workers, mp_context=ctx, initializer=_ignore_stop_signals
            )
            filled = 0
            try:
                futures = [
                    self._submit(min(self.CHUNK, size - i)) for i in range(0, size, self.CHUNK)
                ]
                for fut in futures:
                    o, c, k, w = fut.result()
                    at = slice(filled, filled + len(o))
                    self.orig[at], self.clean[at], self.masks[at], self.hwhm[at] = o, c, k, w
                    filled += len(o)
                self._pending = [self._submit(self.CHUNK) for _ in range(2 * workers)]
            except BrokenProcessPool as e:
                self.close()
                raise WorkersLostError(_WORKERS_LOST) from e
        else:
            for i in range(size):
                self._make(i)
        log.info(
            "synthetic pool: %d crops in %.1f s (%d workers)",
            size,
            time.perf_counter() - t0,
            workers,
        )

    def _make(self, i: int) -> None:
        self.orig[i], self.clean[i], scene = make_pair(
            self.rng, self.crop_px, glow_cap=self.glow_cap, mix=self.mix
        )
        self.masks[i] = crop_masks(scene)
        if self.widths:
            self.hwhm[i] = star_widths(self.orig[i : i + 1])[0]

    def _submit(self, count: int) -> Future[tuple[np.ndarray, ...]]:
        assert self._executor is not None
        seed = self.task_seed(self._seed, self._task)
        fut = self._executor.submit(
            _make_pool_task, seed, count, self.crop_px, self.glow_cap, self.mix, self.widths
        )
        self._task += 1
        return fut

    def refresh_due(self, step: int, every: int) -> bool:
        """Whether step ``step`` should call ``refresh``. In-process crops cost the loop
        their making, so every ``every`` steps; with workers, every step: collecting
        their finished tasks is free, and a worker whose two queued tasks are done idles
        until they are collected (at every 50th step, one process filled at most 32
        crops per 50 steps, a twentieth of what it makes on a CPU run)."""
        return self._executor is not None or step % every == 0

    def refresh(self, count: int) -> int:
        """Replace crops by new ones; returns how many were replaced.

        In-process: ``count`` crops made now. With workers: every finished
        task's crops, and the task is submitted again. A worker that died (killed, out
        of memory) breaks the pool: :class:`WorkersLostError`.
        """
        if self._executor is None:
            for i in self.rng.integers(0, len(self.orig), count):
                self._make(int(i))
            return count
        done = [f for f in self._pending if f.done()]
        replaced = 0
        try:
            for fut in done:
                self._pending.remove(fut)
                o, c, k, w = fut.result()
                idx = self.rng.integers(0, len(self.orig), len(o))
                self.orig[idx], self.clean[idx], self.masks[idx], self.hwhm[idx] = o, c, k, w
                replaced += len(o)
                self._pending.append(self._submit(self.CHUNK))
        except BrokenProcessPool as e:
            raise WorkersLostError(_WORKERS_LOST) from e
        return replaced

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``n`` random crops: original, starless, masks (float32 0/1; MASK_CHANNELS),
        typical star half-widths (NaN unless the pool measures them)."""
        idx = self.rng.integers(0, len(self.orig), n)
        return self.orig[idx], self.clean[idx], self.masks[idx].astype(np.float32), self.hwhm[idx]

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _ignore_stop_signals() -> None:
    """A pool worker's start: Ctrl-C (SIGINT) and SIGTERM reach the whole process group
    (systemd's stop, Slurm's scancel, ``kill -TERM -PGID``), and the training process
    (which stops at the next step, saves, and shuts its pool down) needs its workers
    alive until then."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def star_widths(images: np.ndarray) -> np.ndarray:
    """(N,) float32 typical star half-widths of (N, C, H, W) stretched images, what a
    width-conditioned generator reads (``inference.star_hwhm``, as for whole frames)."""
    return np.array([star_hwhm(im) for im in images], dtype=np.float32)


def _make_pool_task(
    seed: list[int], count: int, crop_px: int, glow_cap: float, mix: Mix, widths: bool
) -> tuple[np.ndarray, ...]:
    """A worker's task: ``make_pool``'s crops, and their star widths when measured."""
    orig, clean, masks = make_pool(seed, count, crop_px, glow_cap, mix)
    hwhm = star_widths(orig) if widths else np.full(count, np.nan, np.float32)
    return orig, clean, masks, hwhm


def sample_crops(pairs: list[Pair], n: int, crop_px: int, rng: np.random.Generator) -> Pair:
    """``n`` random aligned crops from (original, starless) image pairs, (C,H,W) each."""
    xs, ys = [], []
    for _ in range(n):
        o, c = pairs[int(rng.integers(len(pairs)))]
        if o.shape[0] == 1:
            o, c = np.repeat(o, 3, 0), np.repeat(c, 3, 0)
        _, h, w = o.shape
        if h < crop_px or w < crop_px:
            pad = ((0, 0), (0, max(0, crop_px - h)), (0, max(0, crop_px - w)))
            o, c = np.pad(o, pad, mode="reflect"), np.pad(c, pad, mode="reflect")
            _, h, w = o.shape
        y0 = int(rng.integers(0, h - crop_px + 1))
        x0 = int(rng.integers(0, w - crop_px + 1))
        xs.append(o[:, y0 : y0 + crop_px, x0 : x0 + crop_px])
        ys.append(c[:, y0 : y0 + crop_px, x0 : x0 + crop_px])
    return np.stack(xs), np.stack(ys)


def read_pair_folder(
    root: Path, *, nan_policy: str = "error", max_nonfinite_fraction: float = 0.01
) -> list[Pair]:
    """Pairs from ``root/original/X`` and ``root/starless/X`` (identical names), stretched
    (C,H,W), each read by :func:`read_pair` (``nan_policy``, ``max_nonfinite_fraction``:
    ``validation.*``, as for the frames). Raises ``ValueError`` naming the file for an
    original without its starless partner and for what :func:`read_pair` refuses; a
    starless file without its original is left out with a warning naming it."""
    from starnet_core.imageio import readable_suffixes

    orig_dir, clean_dir = root / "original", root / "starless"
    suffixes = readable_suffixes()

    def images(folder: Path) -> list[str]:
        if not folder.is_dir():
            return []
        return sorted(
            p.name
            for p in folder.iterdir()
            if p.is_file() and p.name.lower().endswith(suffixes) and not p.name.startswith(".")
        )

    names = images(orig_dir)
    alone = sorted(set(images(clean_dir)) - set(names))
    if alone:
        shown = ", ".join(str(clean_dir / n) for n in alone[:5])
        more = f" and {len(alone) - 5} more" if len(alone) > 5 else ""
        log.warning("%s%s: no original of that name in %s; left out", shown, more, orig_dir)
    pairs: list[Pair] = []
    for name in names:
        partner = clean_dir / name
        if not partner.exists():
            raise ValueError(f"{orig_dir / name}: no starless partner {partner}")
        pairs.append(
            read_pair(
                orig_dir / name,
                partner,
                nan_policy=nan_policy,
                max_nonfinite_fraction=max_nonfinite_fraction,
            )
        )
    return pairs


def read_pair(
    original: str | Path,
    starless: str | Path,
    *,
    nan_policy: str = "error",
    max_nonfinite_fraction: float = 0.01,
) -> Pair:
    """One (original, hand-made starless) pair, stretched ``(C, H, W)`` float32, each file
    read in the format of its own name (a FITS original may have a TIFF starless): what
    ``starnet train`` reads from a pair folder and the retraining flow from its pairs.

    Linear inputs (FITS, float TIFF) are auto-stretched with parameters fitted on the
    original and applied to both, as the network works on stretched data. A
    ``ValueError`` names the starless file and what is wrong when the sides differ in
    size or channels (mono vs RGB), when one side is linear and the other stretched (a
    float TIFF original with a 16-bit export of the stretched starless frame: its
    starless side would be stretched a second time), and when linear sides are in other
    units (its target would be clipped to black). NaN/Inf samples are handled by
    ``nan_policy`` and ``max_nonfinite_fraction`` (:func:`~starnet_core.imageio.read_image`;
    the settings' ``validation.*``)."""
    from starnet_core.imageio import read_image
    from starnet_core.stretch import apply_stretch, fit_auto_stretch, normalize_linear

    a, b = (
        read_image(p, nan_policy=nan_policy, max_nonfinite_fraction=max_nonfinite_fraction)
        for p in (original, starless)
    )
    if a.data.shape != b.data.shape:
        raise ValueError(
            f"{starless}: starless is {_describe(b)}, its original {original} is {_describe(a)}"
        )
    if a.is_linear != b.is_linear:
        raise ValueError(
            f"{starless}: starless is {_sample_kind(b)}, its original {original} is "
            f"{_sample_kind(a)}: one is linear, the other stretched; give both sides the "
            "same way (both linear, or both stretched)"
        )
    x, y = a.data, b.data
    if a.is_linear:
        x, norm = normalize_linear(x)  # read_image refused a constant or non-finite frame
        median = float(np.median(y))
        if not norm.offset <= median <= norm.offset + norm.scale:  # else clipped to black
            raise ValueError(
                f"{starless}: starless median {median:g} lies outside its original "
                f"{original}'s range {norm.offset:g}..{norm.offset + norm.scale:g}: not the "
                "same units (e.g. a FITS in ADU, a TIFF scaled to [0, 1])"
            )
        y = np.clip((y - norm.offset) / norm.scale, 0, 1).astype(np.float32)
        p = fit_auto_stretch(x)
        x, y = apply_stretch(x, p), apply_stretch(y, p)
    return np.ascontiguousarray(x, np.float32), np.ascontiguousarray(y, np.float32)


def _describe(image: ImageData) -> str:
    """``RGB 64x60 px``: an image's channels and size, as :func:`read_pair` names them."""
    channels, height, width = image.data.shape
    return f"{'mono' if channels == 1 else 'RGB'} {width}x{height} px"


def _sample_kind(image: ImageData) -> str:
    """How :func:`read_pair` names an image's samples: format, sample type and whether
    they are read as linear, e.g. ``tiff float32, linear``."""
    return f"{image.format} {image.dtype}, {'linear' if image.is_linear else 'stretched'}"


def augment(
    x: torch.Tensor,
    y: torch.Tensor,
    gen: torch.Generator,
    scale_p: float,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, float]:
    """Same random flips, 90° rotation, channel shuffle, colour gain and zoom on both
    images; the geometric ones (flips, rotation, zoom) on the ``keep`` mask too. The
    last value is the zoom factor (1: none), by which every width in the crops grew."""

    def r() -> float:
        return float(torch.rand((), generator=gen))

    k = int(torch.randint(0, 4, (), generator=gen))
    x, y = torch.rot90(x, k, (2, 3)), torch.rot90(y, k, (2, 3))
    keep = None if keep is None else torch.rot90(keep, k, (2, 3))
    if r() < 0.5:
        x, y = x.flip(3), y.flip(3)
        keep = None if keep is None else keep.flip(3)
    if r() < 0.5:
        perm = torch.randperm(3, generator=gen)
        x, y = x[:, perm], y[:, perm]
    if r() < 0.3:  # colour balance: same gains on both, stay in [0,1]
        g = (0.85 + 0.3 * torch.rand(1, 3, 1, 1, generator=gen)).to(x.device)
        x, y = (x * g).clamp(0, 1), (y * g).clamp(0, 1)
    zoom = 1.0
    if r() < scale_p:  # zoom in on a sub-window: stars and structures get bigger
        s = x.shape[-1]
        c = int(s * (0.5 + 0.4 * r()))
        zoom = s / c
        oy, ox = int(r() * (s - c)), int(r() * (s - c))
        x = F.interpolate(x[..., oy : oy + c, ox : ox + c], size=(s, s), mode="bilinear")
        y = F.interpolate(y[..., oy : oy + c, ox : ox + c], size=(s, s), mode="bilinear")
        if keep is not None:
            keep = F.interpolate(keep[..., oy : oy + c, ox : ox + c], size=(s, s), mode="nearest")
    keep = None if keep is None else keep.contiguous()
    return x.contiguous(), y.contiguous(), keep, zoom


def star_metrics(
    x: torch.Tensor, y: torch.Tensor, out: torch.Tensor, thr: float
) -> dict[str, torch.Tensor]:
    """Residual star flux fraction and background error: what the loss alone hides.

    0-d tensors on the batch's device, not floats: reading one waits for the device,
    so the loop reads its sums once per log (:func:`_read_logs`)."""
    stars = (x - y).clamp(min=0)
    mask = stars > thr
    left = ((out - y) * mask).sum() / (stars * mask).sum().clamp(min=1e-6)
    bg = (x - y).abs() < thr / 4
    bg_err = ((out - y).abs() * bg).sum() / bg.sum().clamp(min=1)
    return {"residual_star_flux": left.detach(), "bg_l1": bg_err.detach()}


def _add_logs(acc: dict[str, torch.Tensor], logs: dict[str, torch.Tensor]) -> None:
    """Add a step's 0-d log tensors to the running sums (float32, on their device: MPS
    has no float64, and a hundred steps' sum needs none)."""
    for k, v in logs.items():
        v = v.detach().float()
        acc[k] = acc[k] + v if k in acc else v


def _read_logs(acc: dict[str, torch.Tensor], n: int) -> dict[str, float]:
    """The means of the running sums over ``n`` steps, as floats: one device sync."""
    if not acc:
        return {}
    values = (torch.stack(list(acc.values())) / n).tolist()
    return dict(zip(acc, values, strict=True))


def _module_positions(opt: torch.optim.Optimizer, module: nn.Module) -> list[int]:
    """For each of the optimizer's parameters (its state's index), that parameter's
    position in ``module.parameters()``: checkpoints key the Adam state by the latter, so
    a run resumes whatever parameter groups it builds (``film_lr_mult``)."""
    where = {id(p): j for j, p in enumerate(module.parameters())}
    return [where[id(p)] for group in opt.param_groups for p in group["params"]]


def _adam_to_tensors(
    opt: torch.optim.Adam, module: nn.Module, prefix: str
) -> dict[str, torch.Tensor]:
    pos = _module_positions(opt, module)
    out = {}
    for i, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            out[f"{prefix}.{pos[i]}.{k}"] = torch.as_tensor(v).detach().cpu().contiguous()
    return out


def _adam_from_tensors(
    opt: torch.optim.Adam, module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str
) -> None:
    index = {j: i for i, j in enumerate(_module_positions(opt, module))}
    sd = opt.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            _, j, k = key.split(".", 2)
            if int(j) in index:  # a parameter this optimizer trains (film_only: FiLM alone)
                state.setdefault(index[int(j)], {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


def _generator_optimizer(g: StarNetUNet, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam over the generator; a conditioned one's FiLM weights in a group of their own
    whose rate is ``cfg.film_lr_mult`` times the others' (``lr_mult``, read by the loop);
    with ``cfg.film_only`` that group alone, the other weights frozen."""
    film = film_weights(g)
    ids = {id(p) for p in film}
    rest = [p for p in g.parameters() if id(p) not in ids]
    groups: list[dict[str, Any]] = [] if cfg.film_only else [{"params": rest, "lr_mult": 1.0}]
    if cfg.film_only:
        if not film:
            raise ValueError("--film-only needs a width-conditioned generator (FiLM layers)")
        for p in rest:
            p.requires_grad_(False)
    if film:
        groups.append({"params": film, "lr_mult": cfg.film_lr_mult})
    return torch.optim.Adam(groups, lr=cfg.lr, betas=(0.9, 0.99))


@dataclass
class TrainState:
    step: int
    generator: StarNetUNet
    discriminator: PatchDiscriminator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam
    ema: StarNetUNet | None = None  # the generator's moving average (cfg.ema_decay > 0)
    # why the run stopped before ``cfg.steps`` on an error it survived (its checkpoint
    # saved): a crop worker lost (:class:`WorkersLostError`); "" otherwise
    stop_reason: str = ""

    @property
    def release(self) -> StarNetUNet:
        """The generator to evaluate and export: the moving average when kept."""
        return self.ema if self.ema is not None else self.generator


def _new_ema(generator: StarNetUNet) -> StarNetUNet:
    ema = copy.deepcopy(generator)
    ema.requires_grad_(False)
    ema.eval()
    return ema


def update_ema(ema: nn.Module, generator: nn.Module, decay: float, step: int) -> None:
    """``ema = d * ema + (1 - d) * generator``, parameter-wise, with ``d = min(decay,
    (1 + step) / (10 + step))`` so a fresh average is not stuck at the first weights."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), generator.parameters(), strict=True):
            pe.lerp_(p.detach(), 1.0 - d)
        for be, b in zip(ema.buffers(), generator.buffers(), strict=True):
            be.copy_(b)


def build_state(cfg: TrainConfig, generator: StarNetUNet | None = None) -> TrainState:
    """A fresh run (``generator`` given: fine-tune it)."""
    torch.manual_seed(cfg.seed)
    g = generator if generator is not None else StarNetUNet(cfg.model)
    d = PatchDiscriminator()
    return TrainState(
        0,
        g,
        d,
        _generator_optimizer(g, cfg),
        torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=(0.5, 0.99)),
        _new_ema(g) if cfg.ema_decay > 0 else None,
    )


def save_checkpoint(state: TrainState, cfg: TrainConfig, path: Path) -> None:
    """Everything to resume, as one safetensors file (atomic)."""
    tensors = {
        f"g.{k}": v.detach().cpu().contiguous() for k, v in state.generator.state_dict().items()
    }
    tensors |= {
        f"d.{k}": v.detach().cpu().contiguous() for k, v in state.discriminator.state_dict().items()
    }
    tensors |= _adam_to_tensors(state.opt_g, state.generator, "opt_g")
    tensors |= _adam_to_tensors(state.opt_d, state.discriminator, "opt_d")
    if state.ema is not None:
        tensors |= {
            f"{EMA_PREFIX}{k}": v.detach().cpu().contiguous()
            for k, v in state.ema.state_dict().items()
        }
    meta = {
        "step": str(state.step),
        "train_config": cfg.to_json(),
        "model_config": state.generator.config.to_json(),
    }
    write_safetensors(tensors, path, meta)  # OSError naming it, no temporary left


def load_checkpoint(path: Path, cfg: TrainConfig) -> TrainState:
    """Resume from a checkpoint written by :func:`save_checkpoint`. Raises ``ValueError``
    naming the file when it is not one (truncated, corrupt, an exported weights file)."""
    meta = checkpoint_metadata(path)
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: unreadable checkpoint ({e})") from e
    try:
        model = StarNetUNet(ModelConfig.from_json(meta["model_config"]))
    except (ValueError, TypeError, AttributeError) as e:  # not JSON, not an object, bad values
        raise ValueError(f"{path}: unusable model_config in the metadata ({e})") from e
    state = build_state(cfg, model)
    ema = {k[len(EMA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX)}
    for what, net, prefix in (
        ("generator", state.generator, "g."),
        ("discriminator", state.discriminator, "d."),
    ):
        try:
            net.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith(prefix)})
        except RuntimeError as e:  # missing, unexpected or misshapen tensors
            raise ValueError(
                f"{path}: its {what} tensors do not match its model_config; restore the "
                f"file, or start over with --new ({_first_line(e)})"
            ) from e
    _adam_from_tensors(state.opt_g, state.generator, tensors, "opt_g")
    _adam_from_tensors(state.opt_d, state.discriminator, tensors, "opt_d")
    state.step = int(meta["step"])
    if cfg.ema_decay > 0:
        # a checkpoint from a run without the average starts it at its generator
        state.ema = _new_ema(state.generator)
        if ema:
            try:
                state.ema.load_state_dict(ema)
            except RuntimeError as e:
                raise ValueError(
                    f"{path}: its moving-average tensors do not match its model_config; "
                    f"restore the file, or start over with --new ({_first_line(e)})"
                ) from e
    elif ema:
        log.warning(
            "%s: its moving average of the generator is dropped (ema_decay 0: --ema 0)", path
        )
    return state


def _first_line(e: BaseException) -> str:
    """An exception's message up to its first line break (torch's load errors list every
    tensor)."""
    text = str(e).strip()
    first = text.split("\n", 1)[0]
    return first + (" ..." if first != text else "")


def warmup_length(steps: int, warmup: int) -> int:
    """The warm-up steps of a run of ``steps``: ``warmup``, but at most a tenth of the run
    (at least 1), so a short run (a fine-tune of a few hundred steps) still reaches its
    cosine decay. What :func:`lr_at` uses, for the CLI and the retrain flow alike."""
    return min(warmup, max(1, steps // 10)) if warmup > 0 else 0


def lr_at(
    step: int, cfg: TrainConfig, elapsed_s: float = 0.0, budget_s: float | None = None
) -> float:
    """Linear warm-up (:func:`warmup_length`), then cosine decay to ``lr_min`` over the
    steps, or with a time budget over ``budget_s`` seconds of training loop (``elapsed_s``
    of them gone): what the loop has left of ``cfg.time_limit_s`` once the pool is built
    (default: all of it). With a time budget the warm-up also ends once a tenth of the
    budget is spent, so a run that makes few steps still decays.
    """
    warm = warmup_length(cfg.steps, cfg.warmup_steps)
    budget = cfg.time_limit_s if budget_s is None else budget_s
    if step < warm:
        ramp = (step + 1) / warm
        if cfg.time_limit_s > 0:
            ramp = max(ramp, elapsed_s / (0.1 * budget)) if budget > 0 else 1.0
        if ramp < 1.0:
            return cfg.lr * ramp
    t = min(1.0, max(0, step - warm) / max(1, cfg.steps - warm))
    if cfg.time_limit_s > 0:
        t = min(1.0, elapsed_s / budget) if budget > 0 else 1.0
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * t))


# The random streams drawn anew at every step (the last word of :func:`step_seed`):
# each batch's file-pair crops and real/synthetic split, its augmentation, and the same
# two for the discriminator warm-up's batches.
PAIR_STREAM, AUGMENT_STREAM, WARMUP_PAIR_STREAM, WARMUP_AUGMENT_STREAM = 1, 2, 3, 4


def step_seed(seed: int, step: int, stream: int) -> np.random.SeedSequence:
    """The seed of step ``step``'s draws from one random stream (``*_STREAM``): a function
    of the run's seed and the step alone, so a run resumed from a checkpoint draws at each
    step what the uninterrupted run drew there. Three words, the last nonzero: never the
    stream of the pool's one- and two-word seeds (``cfg.seed + step``,
    :meth:`PairPool.task_seed`), whatever the step."""
    return np.random.SeedSequence([int(seed), int(step), int(stream)])


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A torch generator seeded from :func:`step_seed` (for :func:`augment`)."""
    word = int(step_seed(seed, step, stream).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(word)


def batches(
    cfg: TrainConfig,
    file_pairs: list[Pair],
    pool: PairPool | None,
    widths: bool = False,
    start: int = 0,
    stream: int = PAIR_STREAM,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Endless (original, starless, masks, star half-widths) batches: file-pair crops
    (whose masks are unknown, all zero) and synthetic crops at ``cfg.real_ratio``. The
    widths are measured (:func:`star_widths`) only with ``widths``, else NaN.

    The k-th batch is step ``start + k``'s: its file-pair crops and its real/synthetic
    split come from ``step_seed(cfg.seed, start + k, stream)``, so a resumed run (``start``
    its checkpoint's step) draws the file-pair crops of the uninterrupted run. Synthetic
    crops come from the pool, which a resumed run rebuilds (it is not checkpointed)."""
    step = start
    n_real = 0
    while True:
        rng = np.random.default_rng(step_seed(cfg.seed, step, stream))
        step += 1
        if file_pairs and pool is not None:
            n_real = int(rng.binomial(cfg.batch_size, cfg.real_ratio))
        elif file_pairs:
            n_real = cfg.batch_size
        parts_x, parts_y, parts_k, parts_w = [], [], [], []
        if n_real:
            a, b = sample_crops(file_pairs, n_real, cfg.crop_px, rng)
            parts_x.append(a)
            parts_y.append(b)
            shape = (len(a), len(MASK_CHANNELS), *a.shape[2:])
            parts_k.append(np.zeros(shape, np.float32))  # not known
            parts_w.append(star_widths(a) if widths else np.full(len(a), np.nan, np.float32))
        if cfg.batch_size - n_real and pool is not None:
            a, b, k, w = pool.sample(cfg.batch_size - n_real)
            parts_x.append(a)
            parts_y.append(b)
            parts_k.append(k)
            parts_w.append(w)
        # one part (the usual case) is a fresh array already: no second copy of the batch
        yield tuple(
            torch.from_numpy(p[0] if len(p) == 1 else np.concatenate(p))
            for p in (parts_x, parts_y, parts_k, parts_w)
        )


def train(
    cfg: TrainConfig,
    run_dir: Path,
    *,
    file_pairs: list[Pair] | None = None,
    synthetic: bool = True,
    init: StarNetUNet | None = None,
    anchor: StarNetUNet | None = None,
    resume: bool = True,
    on_log: Callable[[dict[str, float]], None] | None = None,
    on_showcase: Callable[[int, np.ndarray], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainState:
    """Train until ``cfg.steps`` (or ``cfg.time_limit_s``); checkpoints to ``run_dir``.

    ``cfg.time_limit_s`` is the budget of this whole call: the loop trains for what
    building the synthetic pool (and the discriminator warm-up) left of it.

    The checkpoint is ``run_dir/checkpoint.safetensors``; training runs on
    ``cfg.device`` (checkpoints are device-independent, so a run started on a
    GPU resumes on a CPU and back).

    ``file_pairs``: (original, starless) ``(C,H,W)`` float32 stretched arrays.
    ``init``: start from these weights (fine-tuning) when no checkpoint resumes.
    ``anchor``: the reference model of ``cfg.w_anchor`` (needed when it is > 0).
    ``on_log`` gets a record every ``log_every`` steps and at the run's last step;
    ``on_showcase`` a (3, S, 3*S) original|output|truth strip at each checkpoint.
    """
    t_begin = time.perf_counter()
    deadline = t_begin + cfg.time_limit_s if cfg.time_limit_s > 0 else math.inf
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = select_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop shapes: pick the fastest kernels
    ckpt = run_dir / "checkpoint.safetensors"
    resumed = resume and ckpt.exists()
    if resumed:
        state = load_checkpoint(ckpt, cfg)
        log.info("resumed from %s at step %d", ckpt, state.step)
        if cfg.time_limit_s > 0:
            log.info(
                "the learning rate decays anew from %g to %g over this run's %.0f-minute budget",
                cfg.lr,
                cfg.lr_min,
                cfg.time_limit_s / 60,
            )
    else:
        state = build_state(cfg, init)
    _to_device(state, device)
    if cfg.w_anchor > 0:
        if anchor is None:
            raise ValueError("w_anchor > 0 needs the reference model (anchor)")
        anchor = copy.deepcopy(anchor).requires_grad_(False).eval()
        place_model(anchor, device)
    else:
        anchor = None
    file_pairs = file_pairs or []
    if not synthetic and not file_pairs:
        raise ValueError("nothing to train on: synthetic=False and no file pairs given")
    start = state.step
    todo = state.step < cfg.steps  # a finished run (e.g. only exporting) needs no data
    pool = (
        PairPool(
            cfg.pool_size,
            cfg.crop_px,
            cfg.seed + state.step,
            cfg.workers,
            cfg.glow_cap_sigma,
            cfg.mix,
            widths=state.generator.config.width_cond,
        )
        if synthetic and todo
        else None
    )
    try:
        saved = _loop(
            cfg,
            state,
            device,
            ckpt,
            file_pairs,
            pool,
            anchor,
            on_log,
            on_showcase,
            should_stop,
            deadline,
        )
    finally:
        if pool is not None:
            pool.close()
    # the loop's last checkpoint is not this step's; a resumed run that trained no step
    # leaves its checkpoint as it was (a finished run resumed to export it)
    if saved != state.step and not (resumed and state.step == start):
        save_checkpoint(state, cfg, ckpt)
    return state


def _to_device(state: TrainState, device: torch.device) -> None:
    """Move both nets and their Adam moments (loaded on the CPU) to ``device``, in the
    device's memory format (:func:`starnet_core.tiling.memory_format_for`)."""
    fmt = memory_format_for(device)
    for net in (state.generator, state.discriminator, state.ema):
        if net is not None:
            place_model(net, device)
    for opt in (state.opt_g, state.opt_d):
        for st in opt.state.values():
            for k, v in st.items():
                if k != "step" and isinstance(v, torch.Tensor):
                    # a moment takes its weight's layout (conv weights are 4-D)
                    st[k] = v.to(device, memory_format=fmt) if v.dim() == 4 else v.to(device)


def _loop(
    cfg: TrainConfig,
    state: TrainState,
    device: torch.device,
    ckpt: Path,
    file_pairs: list[Pair],
    pool: PairPool | None,
    anchor: StarNetUNet | None,
    on_log: Callable[[dict[str, float]], None] | None,
    on_showcase: Callable[[int, np.ndarray], None] | None,
    should_stop: Callable[[], bool] | None,
    deadline: float = math.inf,
) -> int:
    """Train until ``cfg.steps``, the ``deadline`` (a ``time.perf_counter()`` time: the
    end of the run's time budget) or ``should_stop``; returns the step of the last
    checkpoint it wrote (-1: none). Each step's random draws (file-pair crops,
    augmentation) are seeded by the step (:func:`step_seed`): a run of file pairs alone
    resumed from a checkpoint trains exactly as the uninterrupted run did."""
    saved = -1
    g, d = state.generator, state.discriminator
    g.train()
    d.train()
    gan_on = cfg.w_gan > 0 or cfg.w_percep > 0
    cond = g.config.width_cond
    data = batches(cfg, file_pairs, pool, widths=cond, start=state.step)
    acc: dict[str, torch.Tensor] = {}
    n_acc = 0
    fresh = 0
    lr = t0 = 0.0  # both set before the first record

    def log_steps() -> None:
        """Log the means over the steps since the last record (``n_acc`` of them)."""
        nonlocal acc, n_acc, fresh, t0
        dt = time.perf_counter() - t0
        record = _read_logs(acc, n_acc)
        record |= {
            "step": state.step,
            "lr": lr,
            "s_per_step": dt / n_acc,
            "fresh_crops": fresh,
            "time": time.time(),
        }
        log.info(
            "step %d  l_g_pix %.4f  residual star flux %.3f  bg_l1 %.4f  %.3f s/step",
            state.step,
            record["l_g_pix"],
            record["residual_star_flux"],
            record["bg_l1"],
            record["s_per_step"],
        )
        if on_log is not None:
            on_log(record)
        acc, n_acc, fresh, t0 = {}, 0, 0, time.perf_counter()

    if gan_on and cfg.d_warmup_steps > 0 and state.step < cfg.steps:
        warm = batches(cfg, file_pairs, pool, widths=cond, start=1, stream=WARMUP_PAIR_STREAM)
        try:
            _warm_discriminator(cfg, state, device, warm, pool, should_stop, deadline)
        except WorkersLostError as e:
            state.stop_reason = str(e)
            log.error("%s: the discriminator warm-up stops", e)
    t_start = t0 = time.perf_counter()
    budget = deadline - t_start  # the loop's share of the time budget (inf: none)
    if cfg.time_limit_s > 0 and state.step < cfg.steps:
        log.log(
            logging.INFO if budget > 0 else logging.WARNING,
            "%.0f s of the %.0f s time budget left to train (the rest went to building "
            "the synthetic pool and the discriminator warm-up)",
            max(0.0, budget),
            cfg.time_limit_s,
        )
    while state.step < cfg.steps and not state.stop_reason:
        elapsed = time.perf_counter() - t_start
        if should_stop is not None and should_stop():
            break
        if elapsed >= budget:
            log.info("time budget of %.0f s spent at step %d", cfg.time_limit_s, state.step)
            break
        gen = step_generator(cfg.seed, state.step, AUGMENT_STREAM)
        x, y, masks, hwhm = _next_batch(data, device, gen, cfg.augment_scale, cond)
        keep, dense = masks[:, :1], masks[:, 1:2]
        lr = lr_at(state.step, cfg, elapsed, budget)
        for opt in (state.opt_g, state.opt_d):
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
        use_gan = gan_on and state.step >= cfg.gan_start_step

        # --- generator step (D frozen) ---
        for p in d.parameters():
            p.requires_grad_(False)
        out = g(x, hwhm)
        loss, terms = pixel_losses(out, x, y, keep, cfg)
        if anchor is not None:
            with torch.no_grad():
                ref = anchor(x, hwhm if anchor.config.width_cond else None)
            l_g_anchor = ((out - ref).abs() * dense).mean()
            loss = loss + cfg.w_anchor * l_g_anchor
        logs = dict(terms)
        if anchor is not None:
            logs["l_g_anchor"] = l_g_anchor
        if use_gan:
            logit_fake, feat_fake = d(x, out)
            with torch.no_grad():
                _, feat_real = d(x, y)
            l_g_percep = torch.stack(
                [F.l1_loss(a, b) for a, b in zip(feat_fake, feat_real, strict=True)]
            ).sum()
            l_g_gan = F.binary_cross_entropy_with_logits(logit_fake, torch.ones_like(logit_fake))
            loss = loss + cfg.w_percep * l_g_percep + cfg.w_gan * l_g_gan
            logs |= {"l_g_percep": l_g_percep, "l_g_gan": l_g_gan}
        state.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        state.opt_g.step()
        if state.ema is not None:
            update_ema(state.ema, g, cfg.ema_decay, state.step)

        # --- discriminator step on the detached output ---
        if gan_on and state.step >= cfg.gan_start_step - 500:  # let D warm up a little first
            logs |= _discriminator_step(state, x, y, out)

        logs |= star_metrics(x, y, out.detach(), cfg.star_threshold)
        _add_logs(acc, logs)  # no read-back here: the host queues the next step meanwhile
        n_acc += 1
        state.step += 1
        if pool is not None and pool.refresh_due(state.step, cfg.refresh_every):
            try:
                fresh += pool.refresh(cfg.refresh_count)
            except WorkersLostError as e:  # this step counts; the run stops after it
                state.stop_reason = str(e)
                log.error("%s: stopping at step %d", e, state.step)
        if state.step % cfg.log_every == 0:
            log_steps()
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            save_checkpoint(state, cfg, ckpt)
            saved = state.step
            if cfg.keep_every and state.step % cfg.keep_every == 0:
                export_generator(
                    state,
                    kept_weights_path(ckpt.parent, state.step),
                    None,  # a version of its own: dev_version
                    {"train_steps": str(state.step)},
                )
            if on_showcase is not None:
                n_show = min(4, x.shape[0])
                strip = torch.cat(
                    [x[:n_show], out.detach()[:n_show].clamp(0, 1), y[:n_show]], dim=3
                )
                on_showcase(state.step, torch.cat(list(strip), dim=1).cpu().numpy())
    if n_acc:  # the run ended, stopped or ran out of time between two log steps
        log_steps()
    return saved


def pixel_losses(
    out: torch.Tensor, x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor, cfg: TrainConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The generator's loss against the truth ``y`` (no anchor, adversarial or perceptual
    term) and its terms (``l_g_pix``, ``l_g_rel``, ``l_g_low``, ``l_g_over``, ``l_g_keep``);
    ``keep``: (B, 1, H, W) the galaxies and knots (``MASK_CHANNELS``' first)."""
    err = (out - y).abs()
    star_px = (x - y).abs() > cfg.star_threshold
    l_g_pix = err.mean() + cfg.star_weight * (err * star_px).sum() / x.numel()
    l_g_rel = relative_star_error(out, x, y, cfg.star_threshold)
    # A net unsure how much diffuse starlight to take away learns to darken (and tint)
    # the whole crop; per-pixel L1 barely sees a small offset, the block mean does.
    l_g_low = F.avg_pool2d(out - y, cfg.lowfreq_px).abs().mean()
    no_star = (x - y).abs() <= cfg.over_threshold
    l_g_over = (F.relu(y - out) * no_star).mean()
    # galaxies and knots: darkening them is over-removal even under a star's wing
    l_g_keep = (F.relu(y - out) * keep).mean()
    loss = cfg.w_pix * l_g_pix + cfg.w_lowfreq * l_g_low + cfg.w_over * l_g_over
    if cfg.w_galaxy > 0:
        loss = loss + cfg.w_galaxy * l_g_keep
    if cfg.w_rel > 0:
        loss = loss + cfg.w_rel * l_g_rel
    terms = {
        "l_g_pix": l_g_pix,
        "l_g_rel": l_g_rel,
        "l_g_low": l_g_low,
        "l_g_over": l_g_over,
        "l_g_keep": l_g_keep,
    }
    return loss, terms


def relative_star_error(
    out: torch.Tensor, x: torch.Tensor, y: torch.Tensor, threshold: float
) -> torch.Tensor:
    """``l_g_rel``: ``sum |out - y| / (|x - y| + threshold)`` over the star pixels
    (``|x - y| > threshold``), divided by all pixels as the star term of ``l_g_pix`` is.

    Per pixel it is about the share of the star's light left there (a star left whole
    scores ``a / (a + threshold)`` at each pixel of amplitude ``a``), so a faint star
    left whole costs about what a bright one does, where plain L1 weighs them by their
    flux. ``threshold`` also keeps the ratio finite at a star's faint edge.
    """
    amp = (x - y).abs()
    star_px = amp > threshold
    return ((out - y).abs() / (amp + threshold) * star_px).sum() / x.numel()


def _next_batch(
    data: Iterator[tuple[torch.Tensor, ...]],
    device: torch.device,
    gen: torch.Generator,
    scale_p: float,
    widths: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The next (original, truth, masks, star half-widths) batch on ``device``,
    augmented; the widths (grown with the zoom) only with ``widths``, else None."""
    x, y, masks, hwhm = next(data)
    x, y, moved, zoom = augment(
        x.to(device, non_blocking=True),
        y.to(device, non_blocking=True),
        gen,
        scale_p,
        masks.to(device, non_blocking=True),
    )
    assert moved is not None  # masks in, masks out
    fmt = memory_format_for(device)
    w = (hwhm * zoom).to(device) if widths else None
    return x.contiguous(memory_format=fmt), y.contiguous(memory_format=fmt), moved, w


def _discriminator_step(
    state: TrainState, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor
) -> dict[str, torch.Tensor]:
    """One update of the patch discriminator: truth real, the generator's output fake;
    its losses as detached 0-d tensors (:func:`_add_logs`)."""
    d = state.discriminator
    for p in d.parameters():
        p.requires_grad_(True)
    logit_real, _ = d(x, y)
    logit_fake, _ = d(x, out.detach())
    l_d_real = F.binary_cross_entropy_with_logits(logit_real, torch.ones_like(logit_real))
    l_d_fake = F.binary_cross_entropy_with_logits(logit_fake, torch.zeros_like(logit_fake))
    state.opt_d.zero_grad(set_to_none=True)
    ((l_d_real + l_d_fake) / 2).backward()
    state.opt_d.step()
    return {"l_d_real": l_d_real.detach(), "l_d_fake": l_d_fake.detach()}


def _warm_discriminator(
    cfg: TrainConfig,
    state: TrainState,
    device: torch.device,
    data: Iterator[tuple[torch.Tensor, ...]],
    pool: PairPool | None,
    should_stop: Callable[[], bool] | None,
    deadline: float = math.inf,
) -> None:
    """``cfg.d_warmup_steps`` discriminator updates against the frozen generator, at the
    rate ``cfg.d_warmup_lr``, stopped early by ``should_stop`` or the time budget's
    ``deadline``; the generator, its moving average and the step stay as they are.
    ``data``: batches of the warm-up's own stream (``WARMUP_PAIR_STREAM``), so the
    training steps draw the same crops with or without a warm-up."""
    g = state.generator
    for group in state.opt_d.param_groups:
        group["lr"] = cfg.d_warmup_lr
    acc: dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    for i in range(1, cfg.d_warmup_steps + 1):
        if should_stop is not None and should_stop():
            log.info("discriminator warm-up stopped after %d steps", i - 1)
            return
        if time.perf_counter() >= deadline:
            log.info("time budget spent in the discriminator warm-up, after %d steps", i - 1)
            return
        gen = step_generator(cfg.seed, i, WARMUP_AUGMENT_STREAM)
        x, y, _, hwhm = _next_batch(data, device, gen, cfg.augment_scale, g.config.width_cond)
        with torch.no_grad():
            out = g(x, hwhm)
        _add_logs(acc, _discriminator_step(state, x, y, out))
        if pool is not None and pool.refresh_due(i, cfg.refresh_every):
            pool.refresh(cfg.refresh_count)
        if i % cfg.log_every == 0 or i == cfg.d_warmup_steps:
            n = cfg.log_every if i % cfg.log_every == 0 else i % cfg.log_every
            means = _read_logs(acc, n)
            log.info(
                "discriminator warm-up %d/%d  l_d_real %.3f  l_d_fake %.3f  %.3f s/step",
                i,
                cfg.d_warmup_steps,
                means["l_d_real"],
                means["l_d_fake"],
                (time.perf_counter() - t0) / n,
            )
            acc, t0 = {}, time.perf_counter()


def kept_weights_path(run_dir: Path, step: int) -> Path:
    """Where ``keep_every`` keeps the generator of ``step``: names that sort by step."""
    return run_dir / f"weights-{step:09d}.safetensors"


def release_generator(
    state: TrainState, extra: dict[str, str]
) -> tuple[StarNetUNet, dict[str, str]]:
    """What a run releases (``--export``, ``--ship``, kept weights): ``state.release``, the
    moving average when one is kept, and ``extra`` with the metadata marker saying so."""
    if state.ema is not None:
        extra = {**extra, "weights": "moving average of the generator (ema)"}
    return state.release, extra


def export_generator(
    state: TrainState, path: Path, version: str | None, extra: dict[str, str]
) -> str:
    """Write the generator alone as the shippable weights file (:func:`release_generator`);
    returns its sha256. ``version`` None: one unique to these weights,
    :func:`~starnet_core.model.dev_version` (``0.0.0-dev+<8 hex>``). Its parameters only:
    the model's train/eval mode is left as it is (mid-run exports of ``keep_every`` go on
    training it)."""
    model, extra = release_generator(state, extra)
    return save_weights(
        model, path, version=dev_version(model) if version is None else version, extra=extra
    )
