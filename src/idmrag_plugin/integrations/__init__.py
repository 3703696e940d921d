"""Framework integrations; each imports its framework lazily (install the matching extra)."""
