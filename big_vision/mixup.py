"""Mixup and CutMix on host batches (CPU tensors, before the device transfer), with soft targets.

Why on the host: every batch leaves here with the same shapes and dtypes (`image` float [b, c, h, w], `labels` float [b, n_classes]), whatever lambda or box was
drawn, so the compiled XLA step never changes. Mixing on the device would put lambda and the CutMix box into the graph: as Python numbers they are graph
constants (one compile per value), and a data-dependent box is a dynamic slice.

The sampling and mixing follow `timm.data.Mixup` draw for draw (modes batch, pair and elem; CutMix box by lambda or by `cutmix_minmax`, with lambda corrected to
the pasted area), so with the same `np.random.RandomState` the outputs equal timm's. Two differences, both on purpose:
- the random state is explicit and derived from (seed, epoch, step) for every batch, so a resumed run draws the same mixes for the rest of the epoch, whichever
  thread runs the iterator;
- the input batch is never written to (tf.data's buffers are shared, read-only memory); mixed images are new tensors.

Targets are not smoothed here: `ClassificationTask` applies `--label_smoothing` to every kind of target in the loss. For soft targets that is
`(1 - s) * labels + s / n_classes`, exactly what timm's `mixup_target(..., smoothing=s)` builds, so hard labels, pp `onehot` labels and mixed labels all get the
same smoothing, once.
"""

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from utils import settings

MODES = ("batch", "pair", "elem")


@dataclasses.dataclass(frozen=True)
class Mixup:
    """Mixup (alpha > 0) and/or CutMix (alpha > 0, or a `cutmix_minmax` box size range), applied with probability `prob`."""

    num_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    cutmix_minmax: tuple[float, float] | None = None
    prob: float = 1.0
    switch_prob: float = 0.5  # P(CutMix) when both are on
    mode: str = "batch"
    correct_lam: bool = True  # lambda = 1 - (box area after clipping to the image) / (image area)

    def __post_init__(self):
        if self.cutmix_minmax is not None:
            assert len(self.cutmix_minmax) == 2, f"cutmix_minmax must be (min, max), got {self.cutmix_minmax}"
            object.__setattr__(self, "cutmix_minmax", tuple(self.cutmix_minmax))
            object.__setattr__(self, "cutmix_alpha", 1.0)  # as timm: the box size comes from minmax, lambda only decides mix or not
        assert self.mode in MODES, f"mixup mode {self.mode!r} is not one of {MODES}"
        assert self.mixup_alpha > 0 or self.cutmix_alpha > 0, "Mixup needs mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax"

    # ---- parameters (the same draws, in the same order, as timm) --------------------------------
    def _params_per_elem(self, n: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        lam = np.ones(n, dtype=np.float32)
        use_cutmix = np.zeros(n, dtype=bool)
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = rng.rand(n) < self.switch_prob
            lam_mix = np.where(use_cutmix, rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=n), rng.beta(self.mixup_alpha, self.mixup_alpha, size=n))
        elif self.mixup_alpha > 0:
            lam_mix = rng.beta(self.mixup_alpha, self.mixup_alpha, size=n)
        else:
            use_cutmix = np.ones(n, dtype=bool)
            lam_mix = rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=n)
        lam = np.where(rng.rand(n) < self.prob, lam_mix.astype(np.float32), lam)
        return lam, use_cutmix

    def _params_per_batch(self, rng: np.random.RandomState) -> tuple[float, bool]:
        if not rng.rand() < self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(rng.rand() < self.switch_prob)
            alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
            return float(rng.beta(alpha, alpha)), use_cutmix
        if self.mixup_alpha > 0:
            return float(rng.beta(self.mixup_alpha, self.mixup_alpha)), False
        return float(rng.beta(self.cutmix_alpha, self.cutmix_alpha)), True

    def _box_and_lam(self, hw: tuple[int, int], lam: float, rng: np.random.RandomState) -> tuple[tuple[int, int, int, int], float]:
        """CutMix box (y0, y1, x0, x1) and the lambda it implies (timm's cutmix_bbox_and_lam)."""
        h, w = hw
        if self.cutmix_minmax is not None:
            cut_h = rng.randint(int(h * self.cutmix_minmax[0]), int(h * self.cutmix_minmax[1]))
            cut_w = rng.randint(int(w * self.cutmix_minmax[0]), int(w * self.cutmix_minmax[1]))
            y0, x0 = rng.randint(0, h - cut_h + 1), rng.randint(0, w - cut_w + 1)
            y1, x1 = y0 + cut_h, x0 + cut_w
        else:
            ratio = np.sqrt(1 - lam)
            cut_h, cut_w = int(h * ratio), int(w * ratio)
            cy, cx = rng.randint(0, h), rng.randint(0, w)
            y0, y1 = np.clip(cy - cut_h // 2, 0, h), np.clip(cy + (cut_h + 1) // 2, 0, h)
            x0, x1 = np.clip(cx - cut_w // 2, 0, w), np.clip(cx + (cut_w + 1) // 2, 0, w)
        if self.correct_lam or self.cutmix_minmax is not None:
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
        return (int(y0), int(y1), int(x0), int(x1)), lam

    # ---- mixing -------------------------------------------------------------------------------
    def _mix_batch(self, x_bchw: torch.Tensor, rng: np.random.RandomState) -> tuple[torch.Tensor, float]:
        lam, use_cutmix = self._params_per_batch(rng)
        if lam == 1.0:
            return x_bchw, 1.0
        if not use_cutmix:
            return x_bchw * lam + x_bchw.flip(0) * (1.0 - lam), lam
        (y0, y1, x0, x1), lam = self._box_and_lam(x_bchw.shape[-2:], lam, rng)
        out = x_bchw.clone()
        out[:, :, y0:y1, x0:x1] = x_bchw.flip(0)[:, :, y0:y1, x0:x1]
        return out, lam

    def _mix_elem(self, x_bchw: torch.Tensor, rng: np.random.RandomState, pair: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Own lambda per element (elem) or per pair (i, b - 1 - i) (pair); element i mixes with element b - 1 - i."""
        b = len(x_bchw)
        lam_n, use_cutmix_n = self._params_per_elem(b // 2 if pair else b, rng)
        out = x_bchw.clone()
        for i in range(len(lam_n)):
            j = b - i - 1
            lam = lam_n[i]
            if lam == 1.0:
                continue
            if use_cutmix_n[i]:
                (y0, y1, x0, x1), lam = self._box_and_lam(x_bchw.shape[-2:], lam, rng)
                out[i, :, y0:y1, x0:x1] = x_bchw[j, :, y0:y1, x0:x1]
                if pair:
                    out[j, :, y0:y1, x0:x1] = x_bchw[i, :, y0:y1, x0:x1]
                lam_n[i] = lam
            else:
                out[i] = x_bchw[i] * lam + x_bchw[j] * (1 - lam)
                if pair:
                    out[j] = x_bchw[j] * lam + x_bchw[i] * (1 - lam)
        lam_b = np.concatenate((lam_n, lam_n[::-1])) if pair else lam_n
        return out, torch.tensor(lam_b, dtype=x_bchw.dtype).unsqueeze(1)

    def __call__(self, x_bchw: torch.Tensor, label_b: torch.Tensor, rng: np.random.RandomState) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed images (new tensors) and soft targets `labels_bc` (not smoothed). `label_b`: int class labels [b], or float labels
        [b, n_classes] (a pp `onehot`, as big_vision's configs give), mixed as they are."""
        assert len(x_bchw) % 2 == 0, f"mixup pairs element i with b - 1 - i: the batch size must be even, got {len(x_bchw)}"
        assert label_b.ndim in (1, 2), f"mixup takes int class labels [b] or float labels [b, c], got shape {tuple(label_b.shape)}"
        if self.mode == "batch":
            x_bchw, lam = self._mix_batch(x_bchw, rng)
        else:
            x_bchw, lam = self._mix_elem(x_bchw, rng, pair=self.mode == "pair")
        y1_bc = F.one_hot(label_b.long(), self.num_classes).float() if label_b.ndim == 1 else label_b.float()
        labels_bc = y1_bc * lam + y1_bc.flip(0) * (1.0 - lam)
        return x_bchw, labels_bc

    def mix(self, batch: dict[str, torch.Tensor], rng: np.random.RandomState) -> dict[str, torch.Tensor]:
        """A new batch dict: `image` mixed, `label` (int [b]) or pp `labels` replaced by mixed `labels` (float [b, n_classes])."""
        image, labels = self(batch["image"], batch["labels"] if "labels" in batch else batch["label"], rng)
        out = {k: v for k, v in batch.items() if k not in ("image", "label")}
        out["image"], out["labels"] = image, labels
        return out


def get_rng(seed: int, epoch: int, step: int) -> np.random.RandomState:
    """The random state of one batch: a pure function of (seed, epoch, step in epoch), so resume redraws the same mixes."""
    return np.random.RandomState(np.random.MT19937(np.random.SeedSequence([seed % 2**32, epoch, step, 0x6D6978])))


def mix_batches(batches: Iterator[dict[str, torch.Tensor]], mixup: Mixup, seed: int, epoch: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Apply `mixup` to each train batch of an epoch that starts at `start_step`."""
    for step, batch in enumerate(batches, start=start_step):
        yield mixup.mix(batch, get_rng(seed, epoch, step))


@dataclasses.dataclass(frozen=True)
class MixupConfig:
    """The `augmentation` flags: mixup/cutmix alphas (> 0 turns each on), the cutmix box range, probabilities and the mode."""

    mixup: float = 0.0
    cutmix: float = 0.0
    cutmix_minmax: list[float] | None = None
    mixup_prob: float = settings.setting(1.0, range=settings.PROBABILITY)
    mixup_switch_prob: float = settings.setting(0.5, range=settings.PROBABILITY)
    mixup_mode: str = settings.setting("batch", choices=MODES)

    def __post_init__(self):
        settings.check_fields(self)
        for flag in ("mixup", "cutmix"):
            if getattr(self, flag) < 0:
                raise ValueError(f"--{flag} (an alpha) must be >= 0, got {getattr(self, flag)}")
        if self.cutmix_minmax is not None:
            lo, hi = self.cutmix_minmax
            if not 0.0 < lo < hi <= 1.0:
                raise ValueError(f"--cutmix_minmax needs 0 < MIN < MAX <= 1, got {lo} {hi}")

    @property
    def enabled(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0 or self.cutmix_minmax is not None


def make_mixup(config: MixupConfig, num_classes: int, batch_per_process: int) -> Mixup | None:
    """The Mixup of the `augmentation` flags, or None when mixup and cutmix are off."""
    if not config.enabled:
        return None
    if batch_per_process % 2:
        raise ValueError(
            f"--mixup/--cutmix mix element i with element b - 1 - i of each batch: the per-process batch size must be even, got {batch_per_process}"
        )
    if num_classes <= 0:
        raise ValueError(f"--mixup/--cutmix need the number of classes for soft targets; set --num_classes (got {num_classes})")
    minmax = tuple(config.cutmix_minmax) if config.cutmix_minmax is not None else None
    return Mixup(num_classes, config.mixup, config.cutmix, minmax, config.mixup_prob, config.mixup_switch_prob, config.mixup_mode)
