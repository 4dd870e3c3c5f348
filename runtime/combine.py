"""How mode ``both`` turns the global and the patch image score into one decision score.

Every rule is fitted on normal data only: the held-out calibration scores of the normal
training images (global: leave-one-out by image; patch: k-fold by image), one pair per
calibrated image. The decision threshold is then the conformal quantile of the *combined*
held-out scores at the target rate, so whatever the rule, the union of the two signals holds
that rate on new normal images.

Rules (``--combine``), each signal first standardised by the mean and standard deviation
of its held-out normal scores, z = (s - mean) / std (so each signal counts by how far it
stands out of its own normal spread, not by its units or the size of its threshold):

* ``cfisher`` (the default): Fisher's combination with the patch signal's term weighted by
  (1 - rho)^2, rho the correlation of the two signals over the held-out normal pairs (clipped
  to [0, 1]): -2 (log p_g + (1 - rho)^2 log p_p). Where the two signals vary together on
  normal images (Fashion-MNIST, where both see the whole object) the patch signal mostly
  repeats the pooled one, and plain Fisher, which assumes independence, counts that evidence
  twice; where they do not (the textile sets) the rule is plain Fisher. The pooled signal is
  the one kept whole: it is the paper's detector, the patch one is added for local defects. On a
  concordant pair (z_g = z_p = z) the log tails go as z^2 / 2, so the patch then counts as
  ((1 - rho) z)^2: the part of its z that the global z does not predict (E[z_p | z_g] =
  rho z_g). Chosen by measurement (BENCHMARKS.md, "The rule weighted by the normal pairs'
  correlation", every rule on every set): it keeps plain Fisher's textile numbers and brings
  Fashion-MNIST to the global mode's.
* ``fisher``: Fisher's -2 (log p_g + log p_p), each p the Gaussian tail of its z (the
  default before ``cfisher``; over textile local + global, Fashion-MNIST and the
  localisation set the best compromise of the unweighted rules).
* ``zmax``: the larger z decides.
* ``zsum``: the sum of the two z-scores (Stouffer's combination, up to a constant).
* ``max`` / ``sum``: of score / threshold (each signal's own conformal threshold); kept for
  bundles fitted with them. ``sum`` weighs the pooled signal about 5-6x the patch one in z
  units (their normal spreads relative to their thresholds differ that much) and acts
  nearly like the global mode alone.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional

import numpy as np

from .config import COMBINES as RULES
from .errors import Dn2Error

DEFAULT_RULE = "cfisher"
_Z_RULES = ("zmax", "zsum", "fisher", "cfisher")


def _stats(a: np.ndarray, what: str) -> Dict[str, float]:
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    if a.size < 2:
        raise Dn2Error(f"combine: expected >= 2 held-out normal {what} scores, found {a.size}")
    sd = float(a.std(ddof=1))
    return {"mean": float(a.mean()), "std": max(sd, 1e-12 * max(1.0, abs(float(a.mean()))))}


def pair_correlation(g_cal: np.ndarray, p_cal: np.ndarray) -> float:
    """Pearson correlation of the held-out normal pairs, clipped to [0, 1] (0 with fewer
    than 3 finite pairs or a constant signal: no evidence that the two vary together)."""
    g = np.asarray(g_cal, np.float64)
    p = np.asarray(p_cal, np.float64)
    ok = np.isfinite(g) & np.isfinite(p)
    g, p = g[ok], p[ok]
    if g.size < 3 or g.std() == 0 or p.std() == 0:
        return 0.0
    return float(min(max(np.corrcoef(g, p)[0, 1], 0.0), 1.0))


def fit_rule(
    rule: str,
    g_cal: np.ndarray,
    p_cal: np.ndarray,
    g_threshold: float,
    p_threshold: float,
) -> Dict:
    """The parameters of ``rule`` from held-out normal scores (what the manifest stores)."""
    if rule not in RULES:
        raise Dn2Error(
            f"combine_rule: expected one of {', '.join(RULES)}, found {rule!r}",
            param="combine_rule",
        )
    out: Dict = {"rule": rule, "global_threshold": float(g_threshold)}
    out["patch_threshold"] = float(p_threshold)
    if rule in _Z_RULES:
        out["global"] = _stats(g_cal, "global")
        out["patch"] = _stats(p_cal, "patch")
    if rule == "cfisher":
        rho = pair_correlation(g_cal, p_cal)
        out["rho"] = rho
        out["patch_weight"] = (1.0 - rho) ** 2
    return out


def _log_tail(z: np.ndarray) -> np.ndarray:
    """log P(N(0,1) > z), stable far into the tail (asymptotic series past z = 8)."""
    z = np.asarray(z, np.float64)
    out = np.empty_like(z)
    far = z > 8.0
    near = ~far
    sf = np.vectorize(lambda v: 0.5 * math.erfc(v / math.sqrt(2.0)), otypes=[np.float64])
    out[near] = np.log(np.maximum(sf(z[near]), 1e-300))
    zf = z[far]
    out[far] = -0.5 * zf * zf - np.log(zf * math.sqrt(2.0 * math.pi)) + np.log1p(-1.0 / (zf * zf))
    return out


def apply_rule(params: Dict, g, p) -> np.ndarray:
    """Decision scores [N] float32 from raw global and patch image scores (NaN stays NaN)."""
    rule = params.get("rule")
    g = np.atleast_1d(np.asarray(g, np.float64))
    p = np.atleast_1d(np.asarray(p, np.float64))
    if rule in ("max", "sum"):
        a = g / max(params["global_threshold"], 1e-30)
        b = p / max(params["patch_threshold"], 1e-30)
        return (np.maximum(a, b) if rule == "max" else a + b).astype(np.float32)
    if rule not in _Z_RULES:
        raise Dn2Error(f"combine: expected one of {', '.join(RULES)}, found {rule!r}")
    zg = (g - params["global"]["mean"]) / params["global"]["std"]
    zp = (p - params["patch"]["mean"]) / params["patch"]["std"]
    if rule == "zmax":
        out = np.maximum(zg, zp)
    elif rule == "zsum":
        out = zg + zp
    else:
        w = params["patch_weight"] if rule == "cfisher" else 1.0
        bad = np.isnan(zg) | np.isnan(zp)
        out = np.full(zg.shape, np.nan)
        ok = ~bad
        out[ok] = -2.0 * (_log_tail(zg[ok]) + w * _log_tail(zp[ok]))
    return out.astype(np.float32)


def rule_of(stored: Optional[Mapping], rule: str, g_threshold: float, p_threshold: float) -> Dict:
    """The combination parameters of a bundle: the stored ones (checked), or, for bundles
    from before the z-rules, the max / sum rule rebuilt from the two signal thresholds."""
    if stored is None:
        return {"rule": rule, "global_threshold": g_threshold, "patch_threshold": p_threshold}

    def bad(what):
        return Dn2Error(f"bundle signals.combine: expected {what}, found {stored!r:.200}")

    if not isinstance(stored, Mapping) or stored.get("rule") not in RULES:
        raise bad(f"a mapping with 'rule' one of {', '.join(RULES)}")
    need = ["global_threshold", "patch_threshold"]
    out = {"rule": stored["rule"]}
    for key in need:
        v = stored.get(key)
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(f"a finite number {key}")
        out[key] = float(v)
    if stored["rule"] in _Z_RULES:
        for sig in ("global", "patch"):
            st = stored.get(sig)
            ok = isinstance(st, Mapping) and all(
                isinstance(st.get(k), (int, float)) and math.isfinite(st[k])
                for k in ("mean", "std")
            )
            if not ok or st["std"] <= 0:
                raise bad(f"{sig}: {{mean, std > 0}} of its held-out normal scores")
            out[sig] = {"mean": float(st["mean"]), "std": float(st["std"])}
    if stored["rule"] == "cfisher":
        rho, w = stored.get("rho"), stored.get("patch_weight")
        ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (rho, w))
        if not ok or not 0.0 <= rho <= 1.0 or abs(w - (1.0 - rho) ** 2) > 1e-9:
            raise bad("rho in [0, 1] and patch_weight = (1 - rho)^2")
        out["rho"], out["patch_weight"] = float(rho), float(w)
    return out


__all__ = ["RULES", "DEFAULT_RULE", "fit_rule", "apply_rule", "rule_of", "pair_correlation"]
