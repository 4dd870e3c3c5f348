"""dn2 export stage (heavy side): torch / torchvision trunks -> verified, self-describing ONNX."""
