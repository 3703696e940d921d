"""Quick check of identity/attribute codes without the oracles (runs where only torch is installed).

    python benchmarks/codes_quick_eval.py --data gpu_data/faces64_val.npz runs/codes_a runs/codes_b
    (the same as python -m idmrag_plugin.training.quick_eval ...)

For each model folder (the OUTPUT of ``idmrag train-codes``: ``codes_vae`` and
``identity_student.safetensors``), on the validation split: verification AUC of z_id and of
z_attr (cosine, the same pairs as ``codes_eval.py``), reconstruction PSNR, and a student-judged
swap test: the share of D(z_id of A, z_attr of B) whose distilled FaceNet embedding is closer
to A's FaceNet embedding than to B's. The oracle-judged numbers come from ``codes_eval.py``;
this one is for choosing between training runs on a machine without dlib or OpenCV's FaceNet.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from idmrag_plugin.errors import ConfigError
from idmrag_plugin.generation.encoder import DisentangledFaceVAE
from idmrag_plugin.generation.identity_student import IdentityStudent
from idmrag_plugin.training.data import unpack_crops

logger = logging.getLogger(__name__)


def verification_pairs(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Every same-identity pair (at most 20,000) and three random different-identity pairs for each."""
    if len(np.unique(labels)) < 2:
        raise ConfigError("verification pairs need faces of at least two identities")
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(int(label), []).append(i)
    genuine = [(g[a], g[b]) for g in groups.values() for a in range(len(g)) for b in range(a + 1, len(g))][:20000]
    impostor: list[tuple[int, int]] = []
    while len(impostor) < 3 * len(genuine):
        a, b = rng.integers(0, len(labels), 2)
        if labels[a] != labels[b]:
            impostor.append((int(a), int(b)))
    return np.array(genuine), np.array(impostor)


def verification_auc(codes: torch.Tensor | np.ndarray, genuine: np.ndarray, impostor: np.ndarray) -> float:
    """ROC AUC of the cosine similarity of flattened codes: genuine pairs against impostors."""
    flat = torch.as_tensor(codes).flatten(1).float()
    unit = torch.nn.functional.normalize(flat, dim=1).cpu().numpy()
    pairs = np.concatenate([genuine, impostor])
    sims = np.einsum("ij,ij->i", unit[pairs[:, 0]], unit[pairs[:, 1]])
    return float(roc_auc_score(np.r_[np.ones(len(genuine)), np.zeros(len(impostor))], sims))


@torch.no_grad()
def evaluate(model_dir: Path, images: torch.Tensor, embeddings: torch.Tensor, labels: np.ndarray,
             device: torch.device) -> dict[str, float]:
    vae = DisentangledFaceVAE.from_pretrained(model_dir / "codes_vae").to(device).eval()
    student = IdentityStudent.load(model_dir / "identity_student.safetensors").to(device).eval()
    size = vae.config.image_size
    x = torch.nn.functional.interpolate(images, size=(size, size), mode="area") if images.shape[-1] != size else images
    ids, attrs, recons = [], [], []
    for chunk in x.split(256):
        id_mu, _, attr_mu, _ = vae.encode(chunk)
        ids.append(id_mu.float())
        attrs.append(attr_mu.float())
        recons.append(vae.decode(id_mu, attr_mu).float())
    z_id, z_attr, recon = torch.cat(ids), torch.cat(attrs), torch.cat(recons)
    mse = ((recon.clamp(-1, 1) - x) / 2).pow(2).flatten(1).mean(1)
    genuine, impostor = verification_pairs(labels, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    a = torch.as_tensor(rng.integers(0, len(x), 1000), device=device)
    b = torch.as_tensor(rng.integers(0, len(x), 1000), device=device)
    identity = torch.as_tensor(labels, device=device)
    keep = identity[a] != identity[b]
    a, b = a[keep], b[keep]
    swap = vae.decode(z_id[a], z_attr[b]).float().clamp(-1, 1)
    guess = torch.nn.functional.normalize(student(swap).float(), dim=1)
    to_a = (guess * embeddings[a]).sum(1)
    to_b = (guess * embeddings[b]).sum(1)
    return {
        "auc_z_id": round(verification_auc(z_id, genuine, impostor), 4),
        "auc_z_attr": round(verification_auc(z_attr, genuine, impostor), 4),
        "psnr": round(float((10 * torch.log10(1.0 / mse.clamp(min=1e-10))).mean()), 2),
        "swap_closer_to_a_student": round(float((to_a > to_b).float().mean()), 4),
        "swaps": len(a),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help=".npz with a 'val' split (prepare-data or pack_dataset)")
    parser.add_argument("models", nargs="+", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = np.load(args.data, allow_pickle=False)
    val = data["split"] == "val"
    images = torch.from_numpy(unpack_crops(data)[val]).permute(0, 3, 1, 2).float().to(device) / 127.5 - 1.0
    embeddings = torch.nn.functional.normalize(
        torch.from_numpy(data["emb_facenet"][val].astype(np.float32)).to(device), dim=1)
    labels = data["identity"][val]
    results = {}
    for model in args.models:
        results[str(model)] = evaluate(model, images, embeddings, labels, device)
        logger.info("%s %s", model, json.dumps(results[str(model)]))
    sys.stdout.write(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
