"""starnet_core: the science of star removal. Arrays in, arrays out.

Arrays crossing this package's boundary are ``(C, H, W) float32``. Nothing here
imports Prefect, SQLAlchemy or parses YAML (a test checks it).
"""

__version__ = "0.1.0"
