"""Block weights of the patch features: every layer of the ``patches`` output counts the same.

The ``patches`` output concatenates blocks of different layers (Lite0: 40 channels at stride 8
and 112 at stride 16; ResNets: layer2 and layer3). Their squared distances simply add, so the
block with the larger spread decides the nearest normal patch: on Lite0 the stride-16 block
carries more variance than the finer stride-8 one, which sees the small flaws best.
The fit measures each block's total variance over the normal training patches (every cell of
every image, streamed: one sum and one sum of squares per channel) and scales block ``b`` by
``sqrt(mean_V / V_b)``, so each block holds the same total variance. Normal data only: no
anomaly sets the weights. Measured on the textile local defects (BENCHMARKS.md, "Block
weights"). The weights go into the bundle (``signals.patch.extra.block_weights``) and the
scorer applies them to every cell before the kNN; the patch bank is stored weighted.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np

from .errors import Dn2Error


def layer_channels(layers: Sequence[Mapping], total: int) -> list:
    """Channels per block from the model's patch spec ``layers``; checked against ``total``."""
    try:
        ch = [int(layer["channels"]) for layer in layers]
    except (TypeError, KeyError, ValueError):
        raise Dn2Error(
            f"patch layers: expected a list of {{channels: int}}, found {layers!r:.200}"
        ) from None
    if not ch or min(ch) < 1 or sum(ch) != total:
        raise Dn2Error(f"patch layers: expected channels summing to {total}, found {ch}")
    return ch


class BlockStats:
    """Per-channel running sums of normal patch features, [P, C] rows at a time (float64)."""

    def __init__(self, channels: Sequence[int]):
        self.channels = [int(c) for c in channels]
        c = sum(self.channels)
        self.n, self.s, self.ss = 0, np.zeros(c), np.zeros(c)

    def add(self, rows: np.ndarray) -> None:
        r = np.asarray(rows, np.float64)
        self.n += len(r)
        self.s += r.sum(axis=0)
        self.ss += np.einsum("ij,ij->j", r, r)

    def weights(self) -> list:
        """One weight per block: ``sqrt(mean_V / V_b)``, ``V_b`` the block's summed variance."""
        if self.n < 2:
            raise Dn2Error(f"block weights: expected >= 2 normal patches, found {self.n}")
        var = np.maximum(self.ss / self.n - (self.s / self.n) ** 2, 0.0)
        edges = np.cumsum([0] + self.channels)
        v = np.array([var[a:b].sum() for a, b in zip(edges[:-1], edges[1:])])
        if not (v > 0).all():
            return [1.0] * len(v)  # a constant block: nothing to balance
        return [float(w) for w in np.sqrt(v.mean() / v)]


def channel_weights(
    block_weights: Optional[Sequence[float]], channels: Sequence[int]
) -> Optional[np.ndarray]:
    """Per-channel float32 [C] from one weight per block, or None (no weighting). Checked, so a
    bundle's stored weights that do not fit its model fail with what was expected."""
    if block_weights is None:
        return None
    ok = isinstance(block_weights, (list, tuple)) and len(block_weights) == len(channels)
    ok = ok and all(
        isinstance(w, (int, float)) and math.isfinite(w) and w > 0 for w in block_weights
    )
    if not ok:
        raise Dn2Error(
            f"bundle signals.patch.extra.block_weights: expected {len(channels)} positive "
            f"finite numbers (one per patch layer), found {block_weights!r:.200}"
        )
    return np.repeat(np.asarray(block_weights, np.float32), channels)


__all__ = ["BlockStats", "channel_weights", "layer_channels"]
