"""Backends run one model's energy graph on a batch: onnxruntime or torch."""
