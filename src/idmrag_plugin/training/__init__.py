"""Data preparation and training entry points (need the research datasets)."""
