"""Add normal images, videos or frames to a bundle without embedding its old ones again.

    dn2 fit --append BUNDLE NEW... [--output OUT] [--key PRIVATE.pem]

Every fit stores what the bank was built from (manifest ``fit.embeddings``): the normal
embeddings before L2 normalisation, cleaning and k-means (``embeddings.npy``, float32 [N, D])
and one record per row (``embeddings.json``): its source name, the sha256 of its file (exact
copies are found by content even when the file is gone), whether it is a video frame and of
which source (frames are calibrated in time blocks), and for a camera variant the row of its
original. :func:`append_bundle` embeds only the NEW inputs, with the bundle's own fit options
(colour mode, L2 choice, k, cleaning, k-means, fpr, augmentation, ...: ``fit.config``), puts
their rows after the stored ones and runs the one fit path (:func:`dn2.runtime.fit.fit_bundle`)
over all of them: duplicate groups (a new image that is a copy or a near copy of a stored one
joins its group, so appending the same folder twice keeps the threshold), cleaning, k-means,
bank, calibration, groups. The result equals a fresh fit on the old and new inputs in that
order. The bundle is replaced atomically (or written to ``--output``).

Signatures: the manifest changes, so the old signature cannot hold. A signed bundle is only
appended to with ``key`` (the new bundle is signed before it is put in place: a reader that
trusts the key never sees it unsigned) or into ``output`` (written unsigned, and the log says
so). Refused with a message: bundles fitted before embeddings were stored (refit), patch-mode
and whole-frame-view bundles (their patch bank is not rebuilt here: refit with ``--mode``),
and group banks built from ``--group-dirs`` folders.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from .errors import Dn2Error

log = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.npy"
ROWS_FILE = "embeddings.json"
RUN_OPTIONS = ("batch", "threads", "providers", "every", "max_frames", "seconds", "connect_timeout")


@dataclass
class Rows:
    """The fit's normal rows, in bank-input order (before L2 / cleaning / k-means)."""

    x: np.ndarray
    names: List[str]
    hashes: List[Optional[str]]
    temporal: np.ndarray  # bool [N]: a video / stream frame
    segments: np.ndarray  # int [n frames]: the source of each frame, in order
    origin: np.ndarray  # int [N]: row of a camera variant's original, else -1
    streams: List[Dict] = field(default_factory=list)
    history: List[Dict] = field(default_factory=list)

    def then(self, new: Rows) -> Rows:
        """These rows and ``new`` (its frame sources and variant origins renumbered), in the
        order a fresh fit on both would have: the image rows sorted by name (as a fit sorts
        the files it finds), then the frames (old sources first), then the camera variants."""
        n = len(self.x)
        base = int(self.segments.max()) + 1 if len(self.segments) else 0
        return Rows._ordered(
            np.vstack([self.x, new.x]).astype(np.float32),
            list(self.names) + list(new.names),
            list(self.hashes) + list(new.hashes),
            np.concatenate([self.temporal, new.temporal]).astype(bool),
            np.concatenate([self.segments, new.segments + base]).astype(np.int64),
            np.concatenate([self.origin, np.where(new.origin >= 0, new.origin + n, -1)]),
            list(self.streams) + list(new.streams),
            list(self.history),
        )

    @classmethod
    def _ordered(cls, x, names, hashes, temporal, segments, origin, streams, history) -> Rows:
        img = np.flatnonzero(~temporal & (origin < 0))
        img = img[np.argsort(np.asarray([names[i] for i in img], dtype=object), kind="stable")]
        order = np.concatenate([img, np.flatnonzero(temporal), np.flatnonzero(origin >= 0)])
        where = np.empty(len(order), np.int64)
        where[order] = np.arange(len(order))
        org = origin[order]
        return cls(
            x[order],
            [names[i] for i in order],
            [hashes[i] for i in order],
            temporal[order],
            segments,  # frames keep their relative order
            np.where(org >= 0, where[np.clip(org, 0, None)], -1),
            streams,
            history,
        )

    def files(self) -> Dict[str, object]:
        """The bundle files that store these rows (name -> array or JSON object)."""
        rows = {
            "names": list(self.names),
            "sha256": list(self.hashes),
            "temporal": [bool(t) for t in self.temporal],
            "segments": [int(s) for s in self.segments],
            "origin": [int(o) for o in self.origin],
            "streams": self.streams,
        }
        return {EMBEDDINGS_FILE: np.ascontiguousarray(self.x, np.float32), ROWS_FILE: rows}

    def info(self) -> Dict:
        """The manifest's ``fit.embeddings`` section."""
        return {
            "file": EMBEDDINGS_FILE,
            "rows": ROWS_FILE,
            "n": int(len(self.x)),
            "dim": int(self.x.shape[1]),
            "dtype": "float32",
            "normalised": False,
            "appended": self.history,
        }

    @classmethod
    def load(cls, bundle: Path, ref, dim: int) -> Rows:
        """From the bundle's files named by ``ref`` (a manifest ``StoredEmbeddings``)."""
        where = f"bundle {bundle}: fit.embeddings"
        x = np.load(bundle / ref.file, allow_pickle=False)
        if x.ndim != 2 or x.shape[1] != dim or x.dtype != np.float32:
            raise Dn2Error(f"{where}: expected float32 [N, {dim}], found {x.dtype} {x.shape}")
        rows = json.loads((bundle / ref.rows).read_text(encoding="utf-8"))
        n = len(x)
        temporal = np.asarray(rows.get("temporal", []), bool)
        segs = np.asarray(rows.get("segments", []), np.int64)
        origin = np.asarray(rows.get("origin", []), np.int64)
        names, hashes = rows.get("names", []), rows.get("sha256", [])
        if not (len(names) == len(hashes) == len(temporal) == len(origin) == n) or len(segs) != int(
            temporal.sum()
        ):
            raise Dn2Error(f"{where}: expected one record per row of {ref.file} ({n})")
        return cls(
            x,
            [str(s) for s in names],
            list(hashes),
            temporal,
            segs,
            origin,
            list(rows.get("streams", [])),
            list(ref.appended),
        )


def new_rows(x, names, hashes, temporal, segs, origin, streams) -> Rows:
    n = len(x)
    return Rows(
        np.asarray(x, np.float32),
        list(names),
        [None] * n if hashes is None else list(hashes),
        np.zeros(n, bool) if temporal is None else np.asarray(temporal, bool),
        np.asarray(segs if segs is not None else [], np.int64),
        np.full(n, -1, np.int64) if origin is None else np.asarray(origin, np.int64),
        list(streams or []),
    )


def normal_rows(embedder, new: Rows, cfg, prior: Optional[Rows], n_failed: int, say, variants=None):
    """The fit's rows: ``new`` (embedded inputs, their image files hashed for exact copies)
    without files already in the ``prior`` bundle (``dn2 fit --append``), then their camera
    variants (``cfg.augment``; ``variants``: made elsewhere, ``augment.augment_rows``), after
    the ``prior`` rows. Returns (rows, ``fit.augment``)."""
    from .augment import augment_rows
    from .dupes import file_hashes

    if embedder is not None:  # image rows name their files
        real = np.flatnonzero(~new.temporal)
        for i, h in zip(real, file_hashes([new.names[i] for i in real])):
            new.hashes[i] = h
    if prior is not None:  # a file already in the bundle is not added again
        new = _drop_known(prior, new, n_failed, say)
    x, names, temporal, origin, aug_info = augment_rows(
        embedder, new.x, new.names, new.temporal, cfg, say=say, variants=variants
    )
    hashes = new.hashes + [None] * (len(x) - len(new.x))  # variants: no file of their own
    rows = Rows(x, names, hashes, temporal, new.segments, origin, new.streams)
    if prior is not None:
        say(f"append: {len(prior.x)} stored rows + {len(x)} new")
        rows = prior.then(rows)
    return rows, aug_info


def _drop_known(prior: Rows, new: Rows, n_failed: int, say) -> Rows:
    """``new`` without files whose content is already in the bundle (appending a folder twice
    adds nothing); an error when nothing new is left."""
    known = {h for h in prior.hashes if h is not None}
    keep = np.array([h is None or h not in known for h in new.hashes], bool)
    if (~keep).any():
        say(
            f"append: {int((~keep).sum())} of the new images are already in the bundle "
            "(same file content): not added again"
        )
    if not keep.any():
        raise Dn2Error(
            f"append: expected new normal inputs, found {int((~keep).sum())} images all "
            f"already in the bundle and {n_failed} bad files; nothing written"
        )
    idx = np.flatnonzero(keep)
    assert not new.temporal[~keep].any()  # frames carry no file hash
    return Rows(
        new.x[idx],
        [new.names[i] for i in idx],
        [new.hashes[i] for i in idx],
        new.temporal[idx],
        new.segments,
        new.origin[idx],
        new.streams,
    )


def _refuse(m, where: str) -> None:
    """``m``: the bundle's Manifest."""
    mode = m.score.mode
    if m.patch is not None or mode != "global" or m.view is not None:
        raise Dn2Error(
            f"{where}: expected a global-mode bundle for --append, found a "
            f"{mode or 'patch'}-mode / whole-frame-view bundle (its patch bank is not "
            "rebuilt from stored embeddings); refit it with dn2 fit --mode ... on all "
            "the normal images"
        )
    if m.group is not None and m.group.source == "dirs":
        raise Dn2Error(
            f"{where}: expected a bundle without --group-dirs groups for --append, found "
            "groups from group folders (not stored); refit with the new images"
        )
    if m.fit.embeddings is None or m.fit.config is None:
        raise Dn2Error(
            f"{where}: expected the normal embeddings stored at fit (manifest "
            "fit.embeddings), found none: the bundle was fitted by an older dn2 or from "
            "precomputed embeddings without them; refit it (dn2 fit MODEL OLD... NEW... "
            "--output BUNDLE) once, after which --append works"
        )


def append_bundle(
    bundle,
    images=None,
    output=None,
    *,
    embeddings=None,
    names: Optional[Sequence[str]] = None,
    key=None,
    trusted_key=None,
    val_normal=None,
    val_anomalous=None,
    progress: bool = True,
    **run_options,
) -> Path:
    """Add normal ``images`` (files, folders, globs, videos, streams, as ``fit_bundle``) or
    ``embeddings`` [M, D] (+ ``names``) to ``bundle``; recalibrate; write to ``output``
    (default: replace ``bundle`` atomically). ``key``: a private key PEM to sign the result
    (needed to change a signed bundle in place). ``trusted_key``: only a bundle signed by it
    is read. ``run_options``: batch, threads, providers, every, max_frames, seconds,
    connect_timeout for the new inputs; every other fit option is the bundle's own."""
    from .bundle import load_bundle
    from .config import FitConfig
    from .fit import fit_bundle
    from .signing import SIGNATURE

    src = Path(bundle)
    where = f"bundle {src}"
    bad = [k for k in run_options if k not in RUN_OPTIONS]
    if bad:
        raise Dn2Error(
            f"append: expected only run options ({', '.join(RUN_OPTIONS)}); the fit "
            f"options are the bundle's own (fit.config), found {', '.join(bad)}",
            param=bad[0],
        )
    b = load_bundle(src, trusted_key=trusted_key)  # digests (and signature) first
    m = b.manifest
    _refuse(m, where)
    signed = (src / SIGNATURE).exists()
    if signed and key is None and (output is None or Path(output).absolute() == src.absolute()):
        raise Dn2Error(
            f"{where} is signed: appending in place would leave it unsigned; give the "
            "private key to sign the new bundle (--key PRIVATE.pem), or write it elsewhere "
            "with --output NEW and sign that",
            param="key",
        )
    stored = m.fit.config.to_dict()
    stored.update(color=dict(m.fit.color or {}) or m.score.color, l2norm=m.score.l2norm)
    cfg = FitConfig.from_mapping(dict(stored, **run_options), where=f"{where}: fit.config")
    prior = Rows.load(src, m.fit.embeddings, m.model.dim)
    entry = {
        "inputs": [str(i) for i in images] if images is not None else ["embeddings"],
        "rows_before": len(prior.x),
    }
    prior.history.append(entry)
    sign = None
    if key is not None:
        from .signing import load_private_key, sign_bundle

        load_private_key(key)  # a bad key fails now, before any embedding

        def sign(tmp: Path) -> None:
            sign_bundle(tmp, key)

    out = fit_bundle(
        b.model_path,
        src if output is None else output,
        images=images,
        embeddings=embeddings,
        names=names,
        config=cfg,
        val_normal=val_normal,
        val_anomalous=val_anomalous,
        progress=progress,
        prior=prior,
        before_install=sign,
    )
    if signed and key is None:
        log.warning(
            f"{src} was signed; {out} is not (its manifest changed): sign it with "
            f"dn2 sign {out} --key PRIVATE.pem"
        )
    return out
