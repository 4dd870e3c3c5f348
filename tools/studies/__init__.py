"""One-off studies behind a design choice; each prints the table BENCHMARKS.md quotes.

resize.py   the runtime's resize rule vs torchvision (and OpenCV INTER_AREA), the JPEG draft margin
l2norm.py   L2-normalised embeddings vs the paper's plain euclidean distance on the textile set
int8.py     onnxruntime quantizer settings on the fast vs the exact int8 kernels (int8data.py: images)
"""
