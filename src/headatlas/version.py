"""The package version (the lowest floor: the atlas and sweep records stamp it without importing the package's
public face)."""

__version__ = "0.1.0"
