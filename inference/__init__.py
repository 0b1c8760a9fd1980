"""Inference-time helpers: silence slicing and chunked voice conversion."""
