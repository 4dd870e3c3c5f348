"""Speed. ``dn2 bench``: honest end-to-end speed, torch-eager vs dn2 fp32 vs dn2 int8.

The end-to-end benchmark (``dn2 bench``):
cli.py        the command; run.py the library call behind it (``run_bench``)
frames.py     camera-like JPEG frames from scikit-image photos
models.py     the models under test: dn2 ONNX fp32 / int8 and the torch trunk, same weights
torchref.py   the torch-eager reference pipeline (PIL + torchvision + torch)
dn2pipe.py    dn2's pipeline, exactly as dn2 score / watch run it
pipelines.py  the timing harness shared by every pipeline
flops.py      model FLOPs; sgemm.py the measured sgemm peak; report.py tables and JSON

One benchmark per component (``python -m dn2.tools.bench.NAME --help``; numbers in BENCHMARKS.md):
bank.py       exact / HNSW bank query and build, k-means, bundle load
watch.py      the watch loop against the bare model (throughput, latency, CPU, memory soak)
embed.py      decode threads overlapping the model
export.py     export time per arch; bare-model CPU throughput, onnxruntime vs torch eager
gpu.py        fp32 / fp16 / int8 / TensorRT on a GPU box
blas_spin.py  BLAS / onnxruntime thread spinning between batches
"""
