"""Inference: silence slicing, chunked voice conversion (`Svc`), the web UI's logic and
page, and the ONNX export."""
