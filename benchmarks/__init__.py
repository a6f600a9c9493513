"""Benchmarks of the star-removal quality (``python -m benchmarks.quality``)."""
