"""dn2-eval: the paper's evaluation protocols, offline.

datasets.py  Fashion-MNIST IDX files / labelled folder trees -> BGR images + labels
cache.py     embeds each image once per (model sha256, dataset, resize rule); .npy files
scorer.py    the runtime's kNN / leave-one-out / cleaning / k-means / pooling (exact bank)
protocols.py one-class, multimodal, few-shot, impurity, k sweep, k-means C sweep, group, int8
report.py    markdown (paper's numbers beside ours), JSON, PNG plots
run.py       the library call behind the CLI: ``evaluate(EvalConfig(...))``
cli.py       ``dn2 eval``
folder.py    evaluate on your own folders (MVTec AD / anomalib ``Folder`` layout), maps included
locmetrics.py  localisation metrics: pixel ROC-AUC and PRO
locset.py    an offline localisation set built from real images (seeded)
"""
