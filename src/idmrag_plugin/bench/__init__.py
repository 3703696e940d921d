"""``idmrag bench``: privacy, utility, realism and cost of the engine against baselines.

Every method (blur, pixelation, mask, the engine's obfuscation, each generator) runs
through the same :class:`~idmrag_plugin.bench.methods.BenchMethod` interface over a folder
of identity subfolders (LFW by default), and is judged by the same face-recognition
oracles, detector, landmark model and age/gender models.
"""

from idmrag_plugin.bench.methods import METHODS, BenchMethod, build_method
from idmrag_plugin.bench.runner import BenchConfig, BenchResults, run_benchmark

__all__ = ["METHODS", "BenchConfig", "BenchMethod", "BenchResults", "build_method", "run_benchmark"]
