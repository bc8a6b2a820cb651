"""The root of the package's exceptions (here so that every module can use it)."""


class CapmeshError(Exception):
    """Base of the errors of this package."""
