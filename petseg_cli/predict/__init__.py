"""Prediction: one ``Predictor`` and its backends (torch, onnxruntime, OpenVINO), the runtime probe, the
pipeline around the model, the outputs written from it, and the scores (metrics, groups, calibration)."""
