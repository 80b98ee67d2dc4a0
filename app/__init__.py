"""Lethe: the HTTP API and everything it persists."""

__version__ = "0.1.0"
