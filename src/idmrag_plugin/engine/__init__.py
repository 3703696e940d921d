"""The engine's stages, one module each: detect, align, oracles, generator, blend, obfuscate."""
