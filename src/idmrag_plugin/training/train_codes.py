"""``idmrag train-codes``: distil the identity student, then train the disentangled VAE.

Runs on a CPU (small ``--base-channels``) or a GPU, within a time budget, writing a
checkpoint every ``--checkpoint-every`` steps and resuming from it. Input: the ``.npz``
written by ``idmrag prepare-data`` (``crops``, ``emb_facenet``, ``identity``, ``split``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from idmrag_plugin.errors import ConfigError
from idmrag_plugin.generation.encoder import CodesConfig, DisentangledFaceVAE
from idmrag_plugin.generation.identity_student import IdentityStudent
from idmrag_plugin.pipeline import resolve_device
from idmrag_plugin.training.data import unpack_crops
from idmrag_plugin.training.losses import (
    AttributeIdentityAdversary,
    CLUBEstimator,
    cosine_loss,
    gaussian_kl,
    same_identity_similarity,
    supervised_contrastive,
)

logger = logging.getLogger(__name__)

# "club" (the mutual-information penalty) and "attr_adv" (an adversary guessing identity from
# z_attr) ramp up over --penalty-warmup steps: CLUB at 0.05 from the first step destabilised
# the first GPU run (kl_id blew up near step 1000).
WEIGHTS = {
    "rec": 1.0, "kl_id": 3e-4, "kl_attr": 3e-3, "id_sup": 1.0, "id_dec": 0.5,
    "swap_id": 0.5, "swap_cycle": 0.5, "club": 0.0, "supcon": 0.2, "attr_adv": 0.0,
    "attr_pair": 0.0, "swap_id_dlib": 0.0, "id_dec_dlib": 0.0,
}
# The *_dlib terms judge decoded faces with a second student distilled from dlib's embedding
# (``emb_dlib`` in the data, see training.data.add_embeddings); only trained when weighted.
DLIB_TERMS = ("swap_id_dlib", "id_dec_dlib")
RAMPED = ("club", "attr_adv", "attr_pair")


def centred(embeddings: torch.Tensor) -> torch.Tensor:
    """Unit embeddings with their mean removed.

    dlib's embeddings share a large common component (two random LFW faces have cosine
    0.83 +- 0.04), which leaves a cosine loss on them almost no range; centred, random
    pairs sit at 0 +- 0.19, as FaceNet's do. A student distilled from centred targets
    gives the swap and decoded-identity terms a usable gradient.
    """
    shifted = embeddings - embeddings.mean(dim=0, keepdim=True)
    return torch.nn.functional.normalize(shifted, dim=1)


def keyed_cache(path: Path | None, key: str, compute: Callable[[], dict[str, torch.Tensor]],
                device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Tensors kept in ``path`` under ``key``: read back when the file holds that key, else
    computed and written there (nothing written when ``path`` is None)."""
    if path is not None and path.is_file():
        saved = torch.load(path, map_location=device, weights_only=True)
        if saved.get("key") == key:
            logger.info("read %s from %s", ", ".join(k for k in saved if k != "key"), path)
            return {k: v for k, v in saved.items() if k != "key"}
    tensors = compute()
    if path is not None:
        torch.save({"key": key, **tensors}, path)
    return tensors


class FaceData:
    """The training split on the device as uint8 tensors, sampled with identity pairs."""

    def __init__(self, path: Path, size: int, device: torch.device, split: str = "train") -> None:
        data = np.load(path, allow_pickle=False)
        keep = data["split"] == split
        crops = unpack_crops(data)[keep]
        if len(crops) and crops.shape[1] != size:
            import cv2

            crops = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in crops])
        self.images = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous().to(device)
        #: FaceNet's embeddings of the faces in their photos; None in data packed without them
        #: (``pack_dataset(embeddings=False)``), see :meth:`measure_missing_embeddings`
        self.embeddings: torch.Tensor | None = None
        if "emb_facenet" in data.files:
            self.embeddings = torch.from_numpy(data["emb_facenet"][keep].astype(np.float32)).to(device)
        #: dlib's unit descriptors as the oracle gives them (attribute probes read these), their
        #: mean, and the centred descriptors the identity losses compare (see ``centred``)
        self.embeddings_dlib_raw: torch.Tensor | None = None
        self.dlib_mean: torch.Tensor | None = None
        self.embeddings_dlib: torch.Tensor | None = None
        if "emb_dlib" in data.files:
            self._set_dlib(torch.from_numpy(data["emb_dlib"][keep].astype(np.float32)).to(device))
        self.labels = torch.from_numpy(data["identity"][keep].astype(np.int64)).to(device)
        labels = self.labels.cpu().numpy()
        groups: dict[int, list[int]] = {}
        for i, label in enumerate(labels):
            if label >= 0:
                groups.setdefault(int(label), []).append(i)
        self.pairs = [g for g in groups.values() if len(g) >= 2]
        self.device = device

    def _set_dlib(self, raw: torch.Tensor) -> None:
        self.embeddings_dlib_raw = raw
        self.dlib_mean = raw.mean(dim=0)
        self.embeddings_dlib = centred(raw)

    def measure_missing_embeddings(self, facenet_like: Callable[[torch.Tensor], torch.Tensor],
                                   dlib: Callable[[torch.Tensor], torch.Tensor] | None = None,
                                   batch: int = 256, cache: Path | None = None, key: str = "") -> None:
        """Fill the embeddings the data file lacks from the crops themselves: ``facenet_like``
        (images in [-1, 1] -> embeddings; the identity student stands in for FaceNet) and
        ``dlib`` (the same for dlib's descriptor, unit rows), when given. Data packed small
        for another machine leaves them out (``pack_dataset(embeddings=False)``).

        With ``cache``, what was measured is kept there under ``key`` (say, the data file's
        and the judges' fingerprints) and read back by the next run with the same key: a
        resumed training does not measure 17k faces again."""
        def measure(network: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
            with torch.no_grad():
                return torch.cat([network(self.images[i:i + batch].float() / 127.5 - 1.0)
                                  for i in range(0, len(self), batch)]).float()

        wants_dlib = dlib is not None and self.embeddings_dlib_raw is None
        if self.embeddings is not None and not wants_dlib:
            return
        def measure_all() -> dict[str, torch.Tensor]:
            logger.info("measuring the embeddings the data leaves out (%d faces)", len(self))
            measured: dict[str, torch.Tensor] = {}
            if self.embeddings is None:
                measured["facenet_like"] = measure(facenet_like)
            if wants_dlib:
                measured["dlib"] = F.normalize(measure(dlib), dim=1)  # type: ignore[arg-type]
            return measured

        key = f"{key}:{len(self)}:{self.embeddings is None}:{wants_dlib}"
        measured = keyed_cache(cache, key, measure_all, self.device)
        if "facenet_like" in measured:
            self.embeddings = measured["facenet_like"]
        if "dlib" in measured:
            self._set_dlib(measured["dlib"])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batch(
        self, size: int, generator: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Images in [-1, 1], FaceNet embeddings, identity labels and dlib embeddings (None if absent)."""
        if self.embeddings is None:
            raise ConfigError("this training needs FaceNet embeddings (emb_facenet) in its data: prepare it with "
                              "`idmrag prepare-data`, or pack it with its embeddings")
        half = size // 2
        index = list(generator.integers(0, len(self), size - 2 * (half // 2)))
        for group in generator.choice(len(self.pairs), half // 2, replace=False):
            index += list(generator.choice(self.pairs[group], 2, replace=False))
        idx = torch.as_tensor(index, device=self.device)
        x = self.images[idx].float() / 127.5 - 1.0
        dlib = None if self.embeddings_dlib is None else self.embeddings_dlib[idx]
        return x, self.embeddings[idx], self.labels[idx], dlib


def write_checkpoint(path: Path, **state: object) -> None:
    """Write atomically: an interrupted save never leaves a truncated checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def train(args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(resolve_device(args.device))
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    data = FaceData(Path(args.data), args.size, device)
    logger.info("training on %d faces (%d identities with pairs) on %s", len(data), len(data.pairs), device)
    config = CodesConfig(image_size=args.size, base_channels=args.base_channels, id_dim=args.id_dim,
                         attr_channels=args.attr_channels, attr_size=args.attr_size)
    vae = DisentangledFaceVAE(config).to(device)
    student = IdentityStudent(width=args.student_width).to(device)
    weights = {**WEIGHTS, "club": args.club_weight, **dict(args.weight or [])}
    student_dlib = None
    if any(weights[k] > 0 for k in DLIB_TERMS):
        if data.embeddings_dlib is None:
            raise ConfigError(f"--weight {'/'.join(DLIB_TERMS)} needs emb_dlib in {args.data}: "
                              "add it with training.data.add_embeddings")
        student_dlib = IdentityStudent(embedding_dim=data.embeddings_dlib.shape[1], width=args.student_width).to(device)
    attr_dim = config.attr_channels * config.attr_size**2
    club = CLUBEstimator(attr_dim, config.id_dim).to(device)
    adversary = AttributeIdentityAdversary(attr_dim, config.embedding_dim).to(device)
    opt_student = torch.optim.AdamW(student.parameters(), lr=2e-3, weight_decay=1e-4)
    opt_student_dlib = (None if student_dlib is None
                        else torch.optim.AdamW(student_dlib.parameters(), lr=2e-3, weight_decay=1e-4))
    opt_vae = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=1e-4)
    opt_club = torch.optim.Adam(club.parameters(), lr=1e-3)
    opt_adv = torch.optim.Adam(adversary.parameters(), lr=1e-3)
    state = {"student_step": 0, "vae_step": 0, "student_dlib_step": 0}
    if args.init:
        _initialise(Path(args.init), vae, student)
        state["student_step"] = args.student_steps  # the student comes trained with the model
        dlib_file = Path(args.init) / "identity_student_dlib.safetensors"
        if student_dlib is not None and dlib_file.is_file():
            student_dlib.load_state_dict(IdentityStudent.load(dlib_file).state_dict())
            state["student_dlib_step"] = args.student_steps
    ckpt = Path(args.checkpoint or out / "checkpoint.pt")
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        vae.load_state_dict(saved["vae"])
        student.load_state_dict(saved["student"])
        club.load_state_dict(saved["club"])
        opt_vae.load_state_dict(saved["opt_vae"])
        opt_student.load_state_dict(saved["opt_student"])
        opt_club.load_state_dict(saved["opt_club"])
        if "adversary" in saved:
            adversary.load_state_dict(saved["adversary"])
            opt_adv.load_state_dict(saved["opt_adv"])
        if student_dlib is not None and saved.get("student_dlib") is not None:
            student_dlib.load_state_dict(saved["student_dlib"])
            opt_student_dlib.load_state_dict(saved["opt_student_dlib"])
        state = {"student_dlib_step": 0, **saved["state"]}
        logger.info("resumed from %s at %s", ckpt, state)
    logger.info("loss weights %s (ramped over %d steps: %s)", weights, args.penalty_warmup, RAMPED)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    deadline = time.time() + args.minutes * 60
    student_deadline = time.time() + args.minutes * 60 * args.student_share
    log: dict[str, float] = {}

    def save() -> None:
        write_checkpoint(ckpt, vae=vae.state_dict(), student=student.state_dict(), club=club.state_dict(),
                    opt_vae=opt_vae.state_dict(), opt_student=opt_student.state_dict(),
                    opt_club=opt_club.state_dict(), adversary=adversary.state_dict(), opt_adv=opt_adv.state_dict(),
                    student_dlib=None if student_dlib is None else student_dlib.state_dict(),
                    opt_student_dlib=None if opt_student_dlib is None else opt_student_dlib.state_dict(),
                    state=state, config=asdict(config))

    # Phase 1: the identity students mimic FaceNet's (and, when used, dlib's) embedding at
    # training resolution.
    phase1 = [("student", student, opt_student, 1)]  # 1, 3: FaceNet's, dlib's embedding in a batch
    if student_dlib is not None:
        phase1.append(("student_dlib", student_dlib, opt_student_dlib, 3))
    for key, net, opt, column in phase1:
        net.train()
        while state[f"{key}_step"] < args.student_steps and time.time() < student_deadline:
            batch = data.batch(args.batch, rng)
            x = torch.where(torch.rand(batch[0].shape[0], 1, 1, 1, device=device) < 0.5, batch[0], batch[0].flip(3))
            with autocast:
                loss = cosine_loss(net(x).float(), batch[column])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state[f"{key}_step"] += 1
            if state[f"{key}_step"] % 100 == 0:
                logger.info("%s step %d loss %.4f", key, state[f"{key}_step"], loss.item())
                log[f"{key}_loss"] = loss.item()
            if state[f"{key}_step"] % args.checkpoint_every == 0:
                save()
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)

    # Phase 2: the disentangled VAE.
    vae.train()
    last_terms: dict[str, torch.Tensor] = {}
    start = time.time()
    while state["vae_step"] < args.steps and time.time() < deadline:
        x, e, labels, e_dlib = data.batch(args.batch, rng)
        with autocast:
            o = vae(x)
            recon = o["recon"].float()
            perm = torch.roll(torch.arange(x.shape[0], device=device), 1)
            swap = vae.decode(o["z_id"], o["z_attr"][perm]).float()
            swap_codes = vae.encode(swap)
            terms = {
                "rec": F.l1_loss(recon, x) + F.mse_loss(recon, x),
                "kl_id": gaussian_kl(o["id_mu"].float(), o["id_logvar"].float()),
                "kl_attr": gaussian_kl(o["attr_mu"].float(), o["attr_logvar"].float()),
                "id_sup": cosine_loss(vae.id_to_embedding(o["id_mu"]).float(), e),
                "id_dec": cosine_loss(student(recon).float(), e),
                # the identity of the decoded face must not move with z_attr ...
                "swap_id": cosine_loss(student(swap).float(), e),
                # ... and the attributes must not move with z_id
                "swap_cycle": F.mse_loss(swap_codes[2].float(), o["attr_mu"][perm].detach().float())
                + F.mse_loss(swap_codes[0].float(), o["id_mu"].detach().float()),
                "club": club(o["z_attr"].float(), o["z_id"].float()),
                "supcon": supervised_contrastive(o["id_mu"].float(), labels),
                "attr_adv": adversary(o["attr_mu"].float(), e),
                # two photos of one person must not have more alike attribute codes than strangers
                "attr_pair": same_identity_similarity(o["attr_mu"].float(), labels),
            }
            if student_dlib is not None:
                terms["id_dec_dlib"] = cosine_loss(student_dlib(recon).float(), e_dlib)
                terms["swap_id_dlib"] = cosine_loss(student_dlib(swap).float(), e_dlib)
            ramp = min(1.0, (state["vae_step"] + 1) / max(args.penalty_warmup, 1))
            loss = sum(weights[k] * (ramp if k in RAMPED else 1.0) * v for k, v in terms.items())
        opt_vae.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 5.0)
        opt_vae.step()
        club_loss = club.learning_loss(o["z_attr"].float(), o["z_id"].float())
        opt_club.zero_grad(set_to_none=True)
        club_loss.backward()
        opt_club.step()
        adv_loss = adversary.learning_loss(o["attr_mu"].float(), e)
        opt_adv.zero_grad(set_to_none=True)
        adv_loss.backward()
        opt_adv.step()
        state["vae_step"] += 1
        last_terms = terms
        if state["vae_step"] % 100 == 0:
            rate = 100 * args.batch / max(time.time() - start, 1e-6)
            start = time.time()
            logger.info("vae step %d %s (%.0f img/s)", state["vae_step"],
                        " ".join(f"{k}={v.item():.4f}" for k, v in terms.items()), rate)
            log.update({k: float(v.item()) for k, v in terms.items()})
        if state["vae_step"] % args.checkpoint_every == 0:
            save()
    save()
    log.update({k: float(v.item()) for k, v in last_terms.items()})
    vae.eval()
    vae.save_pretrained(out / "codes_vae", dtype=torch.float16)
    from safetensors.torch import save_file

    for net, name in ((student, "identity_student"), (student_dlib, "identity_student_dlib")):
        if net is not None:
            save_file({k: v.detach().cpu().half().contiguous() if v.is_floating_point() else v.cpu()
                       for k, v in net.state_dict().items()},
                      str(out / f"{name}.safetensors"))
    summary = {**state, **log}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _initialise(directory: Path, vae: DisentangledFaceVAE, student: IdentityStudent) -> None:
    """Start from a trained model (``DIR/codes_vae`` + ``DIR/identity_student.safetensors``)."""
    pretrained = DisentangledFaceVAE.from_pretrained(directory / "codes_vae")
    if pretrained.config != vae.config:
        raise ConfigError(f"--init model config {pretrained.config} differs from the requested {vae.config}")
    vae.load_state_dict(pretrained.state_dict())
    student.load_state_dict(IdentityStudent.load(directory / "identity_student.safetensors").state_dict())
    logger.info("initialised from %s", directory)


def weight_option(known: dict[str, float]):
    """argparse type of ``--weight NAME=NUMBER`` for the losses in ``known``."""

    def parse(text: str) -> tuple[str, float]:
        name, _, value = text.partition("=")
        if name not in known:
            raise argparse.ArgumentTypeError(f"unknown loss {name!r}; one of {sorted(known)}")
        try:
            return name, float(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"--weight wants NAME=NUMBER, got {text!r}") from exc

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idmrag train-codes", description=__doc__)
    parser.add_argument("--data", required=True, help=".npz from idmrag prepare-data")
    parser.add_argument("--output", default="runs/codes")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--id-dim", type=int, default=128)
    parser.add_argument("--attr-channels", type=int, default=4)
    parser.add_argument("--attr-size", type=int, default=8)
    parser.add_argument("--student-width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--club-weight", type=float, default=WEIGHTS["club"], help="mutual-information penalty weight")
    parser.add_argument("--weight", type=weight_option(WEIGHTS), action="append", metavar="NAME=VALUE",
                        help=f"override a loss weight (repeatable); losses: {', '.join(WEIGHTS)}")
    parser.add_argument("--penalty-warmup", type=int, default=2000, help="steps over which club/attr_adv ramp up")
    parser.add_argument("--init", default=None,
                        help="start from a trained model folder (codes_vae/ + identity_student.safetensors)")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--student-steps", type=int, default=3000)
    parser.add_argument("--student-share", type=float, default=0.15, help="share of the time budget")
    parser.add_argument("--minutes", type=float, default=60.0, help="time budget")
    parser.add_argument("--checkpoint", default=None, help="checkpoint file (default OUTPUT/checkpoint.pt)")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
