"""klrank's version, as installed."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("klrank")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
