"""The package version (its own module, so the core records it without importing the package root)."""
__version__ = "0.1.0"
