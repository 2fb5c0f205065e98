"""compactify: turn over-parameterized PyTorch checkpoints into the compact networks they stand for."""

__version__ = "0.1.0"
