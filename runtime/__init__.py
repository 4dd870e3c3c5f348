"""dn2 lean runtime: numpy, onnxruntime, hnswlib, OpenCV — never torch.

Everything that runs on the edge box lives here: image preparation, the onnxruntime embedder,
the kNN banks, scoring / calibration, the bundle format and the camera loop.
"""

from .version import __version__

__all__ = ["__version__"]
