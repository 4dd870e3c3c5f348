"""dn2-eval output: a markdown table (the paper's number beside ours where the paper has one),
a JSON file (per-class table, ``mean_auroc``) and PNG plots (matplotlib, Agg backend).

JSON ROC-AUC values are fractions in [0, 1] (what scikit-learn returns); the markdown prints
percent, like the paper.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

# The paper's numbers (Bergman, Cohen & Hoshen 2020), ROC-AUC %, DN2 with ResNet101.
PAPER_CIFAR10_ONE_CLASS = [93.9, 97.7, 85.5, 85.5, 93.6, 91.3, 94.3, 93.6, 95.1, 95.3]  # Table 1
PAPER = {
    "fashion-mnist": {"one-class": {"mean": 94.4, "source": "Table 2 (DN2, ResNet101)"}},
    "cifar10": {
        "one-class": {"mean": 92.5, "per_class": PAPER_CIFAR10_ONE_CLASS, "source": "Table 1"},
        "multimodal": {"mean": 71.7, "source": "Table 5"},
        "kmeans": {
            "table": {"C=1": 91.94, "C=3": 92.00, "C=5": 91.87, "C=10": 91.64, "kNN": 92.52},
            "source": "Table 6",
        },
    },
    "cifar100": {
        "one-class": {"mean": 89.3, "source": "Table 2"},
        "multimodal": {"mean": 71.0, "source": "Table 5"},
    },
}
NA = "n/a"
# Where the paper reports a protocol without a number we can print beside ours.
PAPER_ELSEWHERE = {
    "one-class": "Tables 1-4 (other datasets)",
    "multimodal": "Table 5 (CIFAR-10 / CIFAR-100 only)",
    "few-shot": "Fig. 5 centre (Fashion-MNIST, plotted: no numbers)",
    "impurity": "Fig. 5 right (CIFAR-10, plotted: no numbers)",
    "k-sweep": "Fig. 2 (plotted: no numbers)",
    "kmeans": "Table 6 (CIFAR-10 only)",
    "group": "Fig. 4 (CIFAR-10, plotted: no numbers)",
    "int8": "none (the paper has no int8)",
}


def paper_ref(dataset: str, protocol: str) -> Dict:
    key = dataset.lower().replace("_", "-")
    key = {"cifar-10": "cifar10", "cifar-100": "cifar100", "fmnist": "fashion-mnist"}.get(key, key)
    proto = "one-class" if protocol in ("k-sweep", "int8") else protocol
    return PAPER.get(key, {}).get(proto, {})


def _pct(x: Optional[float], nd: int = 1) -> str:
    return NA if x is None else f"{100.0 * x:.{nd}f}"


def _paper(x) -> str:
    return NA if x is None else f"{x:.1f}"


def markdown(res: Dict, dataset: str, protocol: str, title: str = "") -> str:
    ref = paper_ref(dataset, protocol)
    src = (
        f" — paper: {ref['source']}"
        if ref
        else f" — paper: {PAPER_ELSEWHERE.get(protocol, 'none')}, n/a here"
    )
    lines = [f"### {title or protocol} ({dataset}){src}", ""]
    if res.get("headline"):
        lines += [f"headline (`mean_auroc`): {res['headline']}", ""]
    if protocol in ("one-class", "multimodal", "k-sweep", "few-shot", "impurity", "kmeans", "int8"):
        pc = ref.get("per_class")
        int8 = protocol == "int8"
        head = (
            "| class | name | ROC-AUC % (dn2) |"
            + (" fp32 % | delta pt |" if int8 else "")
            + " paper % |"
        )
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for r in res["per_class"]:
            extra = f" {_pct(r['auroc_fp32'])} | {100 * r['delta']:+.2f} |" if int8 else ""
            p = pc[r["class"]] if pc and r["class"] < len(pc) else None
            lines.append(
                f"| {r['class']} | {r['name']} | {_pct(r['auroc'])} |{extra} {_paper(p)} |"
            )
        extra = f" {_pct(res['mean_auroc_fp32'])} | {100 * res['delta']:+.2f} |" if int8 else ""
        mean_ref = (
            ref.get("mean") if protocol in ("one-class", "multimodal", "int8", "k-sweep") else None
        )
        lines.append(f"| **mean** | | **{_pct(res['mean_auroc'])}** |{extra} {_paper(mean_ref)} |")
    if protocol == "few-shot":
        lines += ["", "| train images per class | mean ROC-AUC % |", "|---|---|"]
        lines += [f"| {n} | {_pct(v)} |" for n, v in res["by_n"].items()]
    if protocol == "impurity":
        lines += [
            "",
            "| impurity | no cleaning % | cleaning % | planted anomalies kept |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['ratio']:.2f} | {_pct(r['auroc_no_clean'])} | {_pct(r['auroc_clean'])} "
            f"| {r['anomalies_left']:.2f} |"
            for r in res["by_ratio"]
        ]
    if protocol == "k-sweep":
        lines += ["", "| k | mean ROC-AUC % |", "|---|---|"]
        lines += [f"| {k} | {_pct(v, 2)} |" for k, v in res["by_k"].items()]
    if protocol == "kmeans":
        cols = list(res["table"])
        ptab = ref.get("table", {})
        lines += [
            "",
            "| | " + " | ".join(cols) + " |",
            "|---|" + "---|" * len(cols),
            "| dn2 | " + " | ".join(_pct(res["table"][c], 2) for c in cols) + " |",
            "| paper | " + " | ".join(f"{ptab[c]:.2f}" if c in ptab else NA for c in cols) + " |",
        ]
    if protocol == "group":
        pools = [p for p in ("mean", "max", "concat") if p in res["per_M"][0]]
        lines += [
            "| M | " + " | ".join(f"{p} %" for p in pools) + " |",
            "|---|" + "---|" * len(pools),
        ]
        lines += [
            f"| {r['M']} | " + " | ".join(_pct(r[p]) for p in pools) + " |" for r in res["per_M"]
        ]
    return "\n".join(lines) + "\n"


def to_json(res: Dict, meta: Dict) -> Dict:
    """The JSON document: ``meta`` (dataset, model, parameters) + the result without scores."""
    out = dict(meta)
    out.update({k: v for k, v in res.items() if k != "scores"})
    out["auroc_unit"] = "fraction in [0, 1]"
    return out


def write_json(doc: Dict, path: str) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc, indent=1, sort_keys=False))


def _grid(n: int):
    cols = min(5, max(1, n))
    rows = (n + cols - 1) // cols
    return rows, cols


def write_plots(res: Dict, folder: str, classes: List[str], title: str) -> List[str]:
    """ROC curves per class, normal-vs-anomalous score histograms, and the sweep curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    scores = res.get("scores") or {}
    if scores:
        fig, ax = plt.subplots(figsize=(6, 6))
        for c, (s, anom) in scores.items():
            fpr, tpr, _ = roc_curve(anom.astype(np.int8), s)
            a = next((r["auroc"] for r in res["per_class"] if r["class"] == c), float("nan"))
            ax.plot(fpr, tpr, lw=1, label=f"{classes[c]} ({100 * a:.1f})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate")
        ax.set_title(f"ROC per normal class\n{title}", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        written.append(_save(fig, out / "roc.png"))
        rows, cols = _grid(len(scores))
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
        for ax, (c, (s, anom)) in zip(axes.flat, scores.items()):
            bins = np.linspace(float(np.min(s)), float(np.percentile(s, 99.5)) + 1e-9, 50)
            ax.hist(s[~anom], bins=bins, alpha=0.6, density=True, label="normal")
            ax.hist(s[anom], bins=bins, alpha=0.6, density=True, label="anomalous")
            ax.set_title(classes[c], fontsize=8)
            ax.tick_params(labelsize=6)
        for ax in list(axes.flat)[len(scores) :]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"kNN score histograms — {title}", fontsize=9)
        written.append(_save(fig, out / "score_hist.png"))
    curves = res.get("curves") or {}
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, cv in curves.items():
            ax.plot(cv["x"], [100 * y for y in cv["y"]], "o-", label=name)
        xs = [x for cv in curves.values() for x in cv["x"]]
        if xs and min(xs) > 0 and max(xs) / min(xs) >= 50:
            ax.set_xscale("log")
        ax.set(ylabel="mean ROC-AUC %", xlabel=res.get("xlabel", ""))
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        written.append(_save(fig, out / "curves.png"))
    return written


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path)
