"""Preference-data recipes of the seed papers (see ../shared/spec/algorithms.md)."""
