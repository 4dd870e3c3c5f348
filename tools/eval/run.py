"""The library behind dn2-eval: dataset -> cached embeddings -> protocol -> JSON / markdown / plots."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from dn2.runtime.errors import Dn2Error
from dn2.runtime.scoring import DEFAULT_L2NORM

from . import protocols as P
from .cache import EmbeddingCache
from .datasets import Dataset, load_dataset, select_per_class
from .report import markdown, paper_ref, to_json, write_json, write_plots


@dataclass
class EvalConfig:
    dataset: str
    model: str
    protocol: str = "one-class"
    train_per_class: Optional[int] = None
    test_per_class: Optional[int] = None
    classes: Optional[Sequence[int]] = None
    k: int = 2
    l2norm: bool = DEFAULT_L2NORM
    seed: int = 0
    model_int8: Optional[str] = None
    cache_dir: Optional[str] = None
    threads: Optional[int] = None
    batch_size: int = 32
    providers: str = "auto"
    progress: bool = True
    sweep: Optional[Sequence[float]] = None  # shots / impurity ratios / ks / Cs / Ms
    clean_fraction: float = P.CLEAN_FRACTION
    clean_k: Optional[int] = None
    fashion_dir: Optional[str] = None


@dataclass
class EvalOutput:
    result: Dict
    doc: Dict
    markdown: str
    plots: List[str] = field(default_factory=list)
    n_embedded: int = 0  # images run through a model in this call (0 when all were cached)


def _embeds(cache: EmbeddingCache, ds: Dataset, tr_idx, te_idx, l2norm: bool, log) -> P.Embeds:
    tr, tr_ok = cache.get("train", tr_idx)
    te, te_ok = cache.get("test", te_idx)
    for split, ok, idx in (("train", tr_ok, tr_idx), ("test", te_ok, te_idx)):
        if not ok.all():
            errs = cache.errors(split)
            bad = [ds.split(split).ids[i] for i in idx[~ok]]
            log(
                f"skipped {len(bad)} unreadable {split} image(s): "
                + "; ".join(f"{b}: {errs.get(b, '?')}" for b in bad[:5])
                + (" ..." if len(bad) > 5 else "")
            )
    e = P.Embeds(
        tr[tr_ok],
        ds.train.labels[tr_idx][tr_ok],
        te[te_ok],
        ds.test.labels[te_idx][te_ok],
        ds.classes,
    )
    return e.normalized() if l2norm else e


def _run_protocol(cfg: EvalConfig, e: P.Embeds, e8: Optional[P.Embeds]) -> Dict:
    name, k, sw = cfg.protocol, cfg.k, cfg.sweep
    if name == "one-class":
        return P.one_class(e, k)
    if name == "multimodal":
        return P.multimodal(e, k)
    if name == "few-shot":
        return P.few_shot(e, k, shots=[int(x) for x in sw] if sw else P.FEW_SHOTS, seed=cfg.seed)
    if name == "impurity":
        return P.impurity(
            e,
            k,
            ratios=sw or P.IMPURITIES,
            clean_fraction=cfg.clean_fraction,
            clean_k=cfg.clean_k,
            seed=cfg.seed,
        )
    if name == "k-sweep":
        return P.k_sweep(e, ks=[int(x) for x in sw] if sw else P.K_SWEEP, k=k)
    if name == "kmeans":
        return P.kmeans_sweep(e, cs=[int(x) for x in sw] if sw else P.KMEANS_C, k=k, seed=cfg.seed)
    if name == "group":
        return P.group(e, k, ms=[int(x) for x in sw] if sw else P.GROUP_M, seed=cfg.seed)
    if name == "int8":
        return P.int8_delta(e, e8, k)
    raise Dn2Error(f"protocol expected one of {sorted(P.PROTOCOLS)}, found {name!r}")


def evaluate(
    cfg: EvalConfig,
    json_out: Optional[str] = None,
    plots_dir: Optional[str] = None,
    log=lambda msg: print(msg, file=sys.stderr),
) -> EvalOutput:
    if cfg.protocol not in P.PROTOCOLS:
        raise Dn2Error(f"protocol expected one of {sorted(P.PROTOCOLS)}, found {cfg.protocol!r}")
    if cfg.protocol == "int8" and not cfg.model_int8:
        raise Dn2Error("protocol int8 compares two models: pass --model-int8 MODEL")
    if cfg.k < 1:
        raise Dn2Error(f"k expected >= 1, found {cfg.k}")
    ds = load_dataset(cfg.dataset, cfg.fashion_dir)
    classes = list(cfg.classes) if cfg.classes else None
    if classes and (min(classes) < 0 or max(classes) >= len(ds.classes)):
        raise Dn2Error(f"classes expected indices in 0..{len(ds.classes) - 1}, found {classes}")
    tr_idx = select_per_class(ds.train.labels, cfg.train_per_class, cfg.seed, classes)
    te_idx = select_per_class(ds.test.labels, cfg.test_per_class, cfg.seed + 1, classes)
    t0 = time.perf_counter()
    models = [cfg.model] + ([cfg.model_int8] if cfg.protocol == "int8" else [])
    caches = [
        EmbeddingCache(
            path, ds, cfg.cache_dir, cfg.threads, cfg.batch_size, cfg.providers, cfg.progress
        )
        for path in models
    ]
    embeds = [_embeds(c, ds, tr_idx, te_idx, cfg.l2norm, log) for c in caches]
    t1 = time.perf_counter()
    res = _run_protocol(cfg, embeds[0], embeds[1] if len(embeds) > 1 else None)
    t2 = time.perf_counter()
    m = caches[0].meta
    prec = m.precision + (f" vs {caches[1].meta.precision}" if len(caches) > 1 else "")
    title = (
        f"{cfg.protocol}, {m.arch} {m.input_size}px {prec}"
        + (", L2-normalised" if cfg.l2norm else ", no L2 norm")
        + f", k={cfg.k}"
    )
    meta = {
        "dataset": ds.name,
        "dataset_source": ds.source,
        "protocol": cfg.protocol,
        "model": {
            "path": cfg.model,
            "sha256": caches[0].model_sha256,
            "arch": m.arch,
            "weights": m.weights,
            "input_size": m.input_size,
            "precision": m.precision,
            "resize": m.resize.to_json(),
            "dim": m.dim,
        },
        "model_int8": (
            {
                "path": cfg.model_int8,
                "sha256": caches[1].model_sha256,
                "precision": caches[1].meta.precision,
            }
            if len(caches) > 1
            else None
        ),
        "params": {
            "k": cfg.k,
            "l2norm": cfg.l2norm,
            "seed": cfg.seed,
            "train_per_class": cfg.train_per_class,
            "test_per_class": cfg.test_per_class,
            "classes": classes,
            "sweep": list(cfg.sweep) if cfg.sweep else None,
            "clean_fraction": cfg.clean_fraction,
            "clean_k": cfg.clean_k,
        },
        "n_train": int(len(embeds[0].train)),
        "n_test": int(len(embeds[0].test)),
        "paper": paper_ref(ds.name, cfg.protocol) or None,
        "seconds": {"embeddings": round(t1 - t0, 2), "protocol": round(t2 - t1, 2)},
        "n_embedded": sum(c.n_embedded for c in caches),
    }
    doc = to_json(res, meta)
    md = markdown(res, ds.name, cfg.protocol, title)
    plots = write_plots(res, plots_dir, ds.classes, title) if plots_dir else []
    if json_out:
        write_json(doc, json_out)
    return EvalOutput(res, doc, md, plots, meta["n_embedded"])
