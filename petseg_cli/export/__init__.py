"""``petseg export``: ONNX (``command``) and int8 quantization (``quantize``)."""
