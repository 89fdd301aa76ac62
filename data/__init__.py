"""Installed as ``aerec._bundled``: the datasets shipped with aerec (see README.md here)."""
