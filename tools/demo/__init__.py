"""``dn2 demo``: the offline Quick start demo.

cli.py      the command: export, fit, render the line video, watch it, plot, verdict
data.py     the textile set (PyPI conformal-clip-data) and its seeded splits
video.py    the "production line" video with defects injected at known frames, ground truth
verdict.py  events against ground truth: found / missed defects, false alerts
plot.py     score per frame, threshold, injected ranges and alerts (matplotlib)
"""
