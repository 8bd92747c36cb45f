"""acik's version, in a module of its own so that any module can read it without importing the package's
front door (`acik/__init__.py`), which reaches the loader."""

__version__ = "0.1.0"
