"""klrank: rank models by the KL divergence of their predicted distributions from the truth."""

from klrank._version import __version__

__all__ = ["__version__"]
