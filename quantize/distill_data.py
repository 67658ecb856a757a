"""What `distill` learns from: the collected samples (the cloud's answers) and the bundle's own training data.

Collected samples (:mod:`edge_sdk.samples`, from the device's ``collect`` folder
or the service's ``--collect`` folder) go through the one preprocessing path
(:func:`edge_sdk.preprocess.preprocess`). A fixed share of them, chosen by a
hash of each image so that a sample stays on its side as the collection grows,
is held out to compare the old and new edge models. The rest are mixed with
the bundle's original training split, so the model does not forget what it
knew: each collected image's target is the cloud's answer (its label, and its
probabilities as soft targets); each original image's is its label and the
bundle's cloud model's soft targets, as in training.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_sdk.bundle import Bundle
from edge_sdk.errors import InvalidImageError
from edge_sdk.preprocess import preprocess
from edge_sdk.samples import SampleStoreError, read_index, read_samples

from . import data as data_mod
from .errors import DistillError
from .fit import soft_targets

log = logging.getLogger(__name__)

ANSWERED = ("offload", "audit", "offline", "cloud")  # kinds that carry the cloud's answer (not "queued")


@dataclass
class Collected:
    """Collected images as model tensors, with the cloud's probabilities and where each came from."""

    x: np.ndarray
    probs: np.ndarray  # the cloud's, [N, classes]
    kinds: list[str]
    keys: list[str]  # sha256 of each stored PNG (the held-out draw)
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def labels(self) -> np.ndarray:
        """The cloud's label index of each image."""
        return self.probs.argmax(1) if len(self) else np.zeros(0, np.int64)

    def take(self, mask: np.ndarray) -> Collected:
        idx = np.flatnonzero(mask)
        return Collected(self.x[idx], self.probs[idx], [self.kinds[i] for i in idx], [self.keys[i] for i in idx])

    def by_kind(self) -> dict[str, int]:
        return dict(sorted(Counter(self.kinds).items()))


def load_collected(sources: Sequence[str], bundle: Bundle, progress: bool = True) -> Collected:
    """Every answered sample under ``sources`` (folders), as the bundle's model tensors.

    Raises:
        DistillError: a folder is missing or holds samples for other labels, or there are no samples.
    """
    from tqdm.auto import tqdm

    man = bundle.manifest
    xs, probs, kinds, keys, skipped = [], [], [], [], []
    for src in sources:
        _check_labels(src, man.labels)
        try:
            samples = list(read_samples(src, kinds=ANSWERED))
        except SampleStoreError as e:
            raise DistillError(str(e)) from None
        for s in tqdm(samples, desc=f"load {src}", unit="img", disable=not progress, leave=False):
            p = s.meta.probabilities
            try:
                if p is None or len(p) != len(man.labels):
                    raise ValueError(f"{0 if p is None else len(p)} probabilities for {len(man.labels)} labels")
                xs.append(preprocess(s.png, man.input, man.preprocess))
            except (InvalidImageError, ValueError) as e:
                skipped.append(f"{s.path}: {e}")
                continue
            probs.append(np.asarray(p, np.float32))
            kinds.append(s.meta.kind)
            keys.append(hashlib.sha256(s.png).hexdigest())
    if not xs:
        raise DistillError(f"no collected samples with the cloud's answers in {', '.join(sources)}")
    if skipped:
        log.warning("skipped %d collected sample(s), e.g. %s", len(skipped), skipped[0])
    return Collected(np.stack(xs), np.stack(probs), kinds, keys, skipped)


def _check_labels(src: str, labels: list[str]) -> None:
    index = read_index(src)
    if index is not None and index.get("labels") not in (None, labels):
        raise DistillError(f"{src}: the samples are for other labels than the bundle's ({len(index['labels'])} "
                           f"labels, model {index.get('name')!r})")


def split_holdout(c: Collected, fraction: float) -> tuple[Collected, Collected]:
    """(to train on, held out): each image's side is fixed by its hash, whatever else is collected."""
    if not 0.0 < fraction < 1.0:
        raise DistillError(f"--holdout must be within (0, 1), not {fraction}")
    draw = np.array([int(k[:8], 16) / 2**32 for k in c.keys])
    held = draw < fraction
    return c.take(~held), c.take(held)


@dataclass
class TrainingMix:
    x: np.ndarray
    y: np.ndarray
    soft: np.ndarray  # soft targets at the distillation temperature
    n_original: int
    n_collected: int


def training_mix(original: data_mod.Arrays, original_soft: np.ndarray, collected: Collected,
                 temperature: float) -> TrainingMix:
    """The original images (labels, the cloud model's soft targets) and the collected ones (the cloud's answers:
    its label, and its probabilities at the distillation temperature)."""
    x, y, soft = [original.x], [original.y], [original_soft]
    if len(collected):
        x.append(collected.x)
        y.append(collected.labels)
        soft.append(soft_targets(np.log(np.clip(collected.probs, 1e-12, 1.0)), temperature))
    return TrainingMix(np.concatenate(x), np.concatenate(y).astype(np.int64), np.concatenate(soft).astype(np.float32),
                       len(original.y), len(collected))
