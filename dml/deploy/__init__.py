"""Use a trained embedder outside training: export it (TorchScript, ONNX, safetensors) with its
preprocessing spec, embed a collection of images to files, build and query a faiss index.

Depends on the networks and :mod:`dml.inference` (the checkpoint-safety path), never on the
training code."""
