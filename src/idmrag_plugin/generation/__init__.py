"""The learned parts that draw a replacement face: the context-aware renderer and what
drives it. Training code lives apart, in :mod:`idmrag_plugin.training`."""
