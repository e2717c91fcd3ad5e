"""Gatehouse agent: auth, proxy and node services plus the gatectl and gate CLIs."""

__version__ = "1.0.0"
