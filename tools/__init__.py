"""dn2 tools: what a user runs besides the runtime, built on dn2.export and dn2.runtime.

eval/     ``dn2 eval``: the paper's evaluation protocols (accuracy); your own folders and the
          localisation metrics
bench/    ``dn2 bench``: end-to-end speed, torch-eager vs dn2 fp32 vs int8; and one benchmark
          script per component (``python -m dn2.tools.bench.bank | watch | embed | export | gpu |
          blas_spin``), whose numbers are in BENCHMARKS.md
demo/     ``dn2 demo``: the offline Quick start demo
plot.py   ``dn2 plot``: a watch run's score over time
studies/  one-off studies behind a design choice (``python -m dn2.tools.studies.resize``,
          ``...studies.l2norm``)
videoio.py  video files in and out (MJPG), shared by the benchmarks and the tests
"""
