"""latemm's version (kept equal to pyproject.toml's by a test); imports nothing."""

__version__ = "0.1.0"
