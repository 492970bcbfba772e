"""Stamen subpackage."""
