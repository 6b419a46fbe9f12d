"""rtserver: a self-hosted, real-time behavioural email trigger server."""

__version__ = "0.2.0"
__all__ = ["__version__"]
