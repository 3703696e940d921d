"""How the pseudonym registry resolves people as it grows: later photos of a registered person
that find them, and new people who join someone else's pseudonym instead.

A stream of LFW photos (up to ``--photos`` per person, in random order) meets the generators'
``PersonRegistry`` by dlib's descriptors, as the engine does: a photo joins the most similar
registered person at the rule's threshold, else registers a new person. The descriptors are the
prepared data's (``idmrag prepare-data``: the engine's alignment and dlib's network).

    python benchmarks/registry_scale.py --data runs/faces128.npz --people 100,300,1000,3000
"""

from __future__ import annotations

import argparse
import json
import logging
import platform

import numpy as np

from idmrag_plugin.calibration import thresholds_for
from idmrag_plugin.generation.vae_generator import (
    REGISTRY_FALSE_MATCHES,
    PersonRegistry,
    registry_threshold,
)

logger = logging.getLogger("registry_scale")


def run_stream(descriptors: np.ndarray, identities: np.ndarray, threshold, rng: np.random.Generator) -> dict:
    """Feed the photos in ``rng``'s order; ``threshold(registered)`` is the same-person level."""
    registry = PersonRegistry(capacity=len(descriptors))
    owner: dict[bytes, int] = {}  # registered seed -> identity
    seen: set[int] = set()
    counts = {"later_photos": 0, "found": 0, "found_someone_else": 0, "new_people": 0, "joined_someone_else": 0}
    for i in rng.permutation(len(descriptors)):
        d, who = descriptors[i], int(identities[i])
        seed = registry.nearest(d, d, threshold(len(registry)), 2.0)  # 2.0: never by codes
        match = None if seed is None else owner[seed.tobytes()]
        if who in seen:
            counts["later_photos"] += 1
            counts["found"] += match == who
            counts["found_someone_else"] += match is not None and match != who
        else:
            counts["new_people"] += 1
            counts["joined_someone_else"] += match is not None
        if seed is None:
            registry.add(d, d, d)
            owner[d.tobytes()] = who
            seen.add(who)
    return {
        **counts,
        "found_rate": counts["found"] / max(counts["later_photos"], 1),
        "found_someone_else_rate": counts["found_someone_else"] / max(counts["later_photos"], 1),
        "joined_someone_else_rate": counts["joined_someone_else"] / max(counts["new_people"], 1),
        "registered": len(registry),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="runs/faces128.npz", help="output of `idmrag prepare-data`")
    parser.add_argument("--people", default="100,300,1000,3000", help="comma-separated stream sizes (people)")
    parser.add_argument("--photos", type=int, default=4, help="photos per person at most")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/registry_scale.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    data = np.load(args.data)
    lfw = np.flatnonzero(np.char.find(data["source"].astype(str), "/lfw/") >= 0)
    descriptors = data["emb_dlib"][lfw].astype(np.float64)
    descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
    identities = data["identity"][lfw]
    fixed = thresholds_for("far1e-3", ["dlib"])["dlib"]
    rules = {"fixed far1e-3 (before)": lambda n: fixed, f"{REGISTRY_FALSE_MATCHES} false matches per stranger": registry_threshold}
    results: dict = {"command": "python benchmarks/registry_scale.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()), "machine": platform.platform(), "runs": []}
    for people in (int(n) for n in args.people.split(",")):
        rng = np.random.default_rng(args.seed)
        chosen = rng.permutation(np.unique(identities))[:people]
        rows = np.concatenate([np.flatnonzero(identities == who)[: args.photos] for who in chosen])
        for name, rule in rules.items():
            stream = run_stream(descriptors[rows], identities[rows], rule, np.random.default_rng(args.seed))
            results["runs"].append({"people": people, "photos": len(rows), "rule": name, **stream})
            logger.info("%5d people, %-34s later photos found %.1f%% (someone else %.1f%%), new people "
                        "joined someone else %.1f%%", people, name, 100 * stream["found_rate"],
                        100 * stream["found_someone_else_rate"], 100 * stream["joined_someone_else_rate"])
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
