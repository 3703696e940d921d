"""``idmrag train-code-lcm``: the pseudonym diffusion teacher, distilled into a latent consistency model.

Data: the identity codes (codes model's ``z_id``) of every training face, each labelled with
the gender and age the renderer draws for it (the attribute probes' code read-outs), with
``tone`` the lightness of the face in its crop (the median L* of cheeks and nose, as the engine
reads it from the person's photo; ``--conditions gender,age,tone``, the default) and with
``group`` (``--conditions gender,age,tone,group``) the perceived group's probabilities that the
probes' group probe reads from the face's dlib descriptor (``emb_dlib`` in the data, see
``training.data.add_embeddings``), as the engine reads them from the person's photo. The
held-out faces (``split == "val"``) calibrate the novelty level the generator holds samples to
(see :func:`novelty_level`).

1. teacher: the epsilon objective on standardised codes, the condition dropped for
   ``--cond-drop`` of the rows (classifier-free guidance);
2. consistency distillation (Luo et al., 2023): a copy of the teacher learns to map any point
   of the DDIM trajectory (``original_inference_steps`` grid) to its origin, against an EMA
   target one *guided* teacher DDIM step later (scale ``--guidance``), with LCM's
   boundary-condition scalings, so that diffusers' ``LCMScheduler`` samples it in 1-4 steps.

Both phases share one time budget (``--minutes`` split by ``--shares``) and one checkpoint,
resumed automatically. Writes ``OUTPUT/teacher`` and ``OUTPUT/lcm`` (safetensors + config
with sha256) and ``OUTPUT/train_summary.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from idmrag_plugin.errors import ConfigError
from idmrag_plugin.generation.attributes import GROUP_LABELS, AttributeProbes, face_lightness
from idmrag_plugin.generation.code_diffusion import (
    CONDITION_SETS,
    GENDER_AGE_TONE,
    TONE_CEILING,
    CodeDiffusion,
    CodeDiffusionConfig,
    condition_of,
)
from idmrag_plugin.generation.latent_diffusion import codes_fingerprint, make_scheduler
from idmrag_plugin.generation.sampler import IdentitySampler, _normalise
from idmrag_plugin.pipeline import resolve_device
from idmrag_plugin.training.train_codes import FaceData, write_checkpoint
from idmrag_plugin.training.train_lcm import boundary_scalings
from idmrag_plugin.weights import (
    ATTRIBUTE_PROBES_FILE,
    CODES_VAE_DIR,
    SAMPLER_FILE,
    packaged,
)

logger = logging.getLogger(__name__)


def training_codes(data_path: Path, codes_dir: Path, device: torch.device, batch: int = 256,
                   split: str = "train") -> torch.Tensor:
    """z_id of every face of the dataset's ``split``, as the codes model encodes it."""
    from idmrag_plugin.generation.encoder import DisentangledFaceVAE

    return _id_codes(DisentangledFaceVAE.from_pretrained(codes_dir).to(device).eval(), data_path, device, batch, split)


def _id_codes(codes, data_path: Path, device: torch.device, batch: int, split: str) -> torch.Tensor:
    data = FaceData(data_path, codes.config.image_size, device, split=split)
    ids = [torch.zeros(0, codes.config.id_dim, device=device)]
    with torch.no_grad():
        for start in range(0, len(data), batch):
            ids.append(codes.encode(data.images[start : start + batch].float() / 127.5 - 1.0)[0])
    return torch.cat(ids)


def training_tones(data_path: Path, split: str = "train", batch: int = 1024) -> np.ndarray:
    """:func:`face_lightness` of every face of the dataset's ``split`` in its own crops, in the
    order :class:`FaceData` holds them."""
    from idmrag_plugin.training.data import unpack_crops

    with np.load(data_path) as data:
        crops = unpack_crops(data)[data["split"] == split]
    return np.concatenate([face_lightness(crops[start : start + batch]) for start in range(0, len(crops), batch)]
                          or [np.zeros(0)])


def training_groups(data_path: Path, probes: AttributeProbes, split: str = "train") -> np.ndarray:
    """The perceived groups' probabilities (N, K) of every face of the dataset's ``split``, read
    by the probes' group probe from the faces' dlib descriptors, in the order :class:`FaceData`
    holds them."""
    if probes.image_group is None or probes.image_reader != "dlib":
        raise ConfigError("the group condition needs attribute probes with a group probe on dlib's descriptor; "
                          "fit them with `idmrag fit-attribute-probes` on data with UTKFace's race labels")
    with np.load(data_path) as data:
        if "emb_dlib" not in data.files:
            raise ConfigError(f"{data_path} has no dlib descriptors (emb_dlib), which the group condition is "
                              "read from; add them with training.data.add_embeddings")
        groups = probes.read_group(data["emb_dlib"][data["split"] == split])
    assert groups is not None
    return groups


#: Held-out faces needed to calibrate the novelty level (else the sampler's strict level holds).
MIN_HELD_OUT = 20


def group_balance(groups: np.ndarray, power: float) -> torch.Tensor:
    """Sampling weights (N,) of training faces: each face weighs count(its perceived group) ^
    -``power`` (the group probe's most probable reading; 0: every face alike, 1: every group
    alike). A face of a group the data holds few of (824 Black faces of 16,499) is seen more
    often, so that the model learns that group's codes under every gender and age condition."""
    most = groups.argmax(1)
    counts = np.bincount(most, minlength=groups.shape[1]).astype(np.float64)
    weights = counts[most] ** -float(power)
    return torch.as_tensor(weights / weights.sum(), dtype=torch.float64)


def novelty_level(held_out: np.ndarray, sampler: IdentitySampler) -> float:
    """The 99th percentile, over held-out people's codes, of the cosine to their nearest training
    identity: a sample closer than that to a training identity resembles it more than 99% of
    unseen real people do (a copy, not a new face)."""
    return float(np.quantile((_normalise(held_out) @ sampler.identity_means.T).max(axis=1), 0.99))


def _origin(x: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return (x - (1 - a).sqrt()[:, None] * eps) / a.sqrt()[:, None]


def train(args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(resolve_device(args.device))
    torch.manual_seed(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    shares = [float(s) for s in args.shares.split(",")]
    if len(shares) != 2 or min(shares) < 0 or sum(shares) <= 0:
        raise ConfigError(f"--shares needs two non-negative numbers (teacher,distill), got {args.shares!r}")

    conditions = [c for c in args.conditions.split(",") if c]
    if tuple(conditions) not in CONDITION_SETS:
        raise ConfigError(f"--conditions must be one of {[','.join(c) for c in CONDITION_SETS]}, got {args.conditions!r}")
    codes_dir = Path(args.codes) if args.codes else packaged(CODES_VAE_DIR)
    probes_path = Path(args.probes) if args.probes else packaged(ATTRIBUTE_PROBES_FILE)
    sampler = IdentitySampler.load(Path(args.sampler) if args.sampler else packaged(SAMPLER_FILE))
    from idmrag_plugin.generation.encoder import DisentangledFaceVAE

    codes_model = DisentangledFaceVAE.from_pretrained(codes_dir).to(device).eval()  # loaded once, both splits
    codes = _id_codes(codes_model, Path(args.data), device, 256, "train")
    held_out = _id_codes(codes_model, Path(args.data), device, 256, "val").cpu().numpy()
    novelty = novelty_level(held_out, sampler) if len(held_out) >= MIN_HELD_OUT else 0.0
    if novelty:
        logger.info("novelty level %.3f (99th percentile of %d held-out faces' nearest training identity)",
                    novelty, len(held_out))
    else:
        logger.warning("fewer than %d held-out faces: samples must pass the sampler's strict nobody-real "
                       "level (%.3f), which real-looking codes rarely do", MIN_HELD_OUT, sampler.distinct_cos)
    probes = AttributeProbes.load(probes_path)
    tones = training_tones(Path(args.data), "train") if "tone" in conditions else None
    groups = training_groups(Path(args.data), probes, "train") if "group" in conditions else None
    cond = condition_of(probes.read_code(codes.cpu().numpy()), tones, args.tone_ceiling, groups).to(device)
    if groups is not None:
        logger.info("perceived groups of the training faces (most probable): %s", ", ".join(
            f"{name} {count}" for name, count in zip(GROUP_LABELS, np.bincount(groups.argmax(1), minlength=len(GROUP_LABELS)),
                                                     strict=True)))
    if tones is not None:
        logger.info("face lightness of the training faces: median %.0f, 5th-95th percentile %.0f-%.0f",
                    *np.percentile(tones, [50, 5, 95]))
    logger.info("%d training codes; the renderer draws %.0f%% of them as label 1, median age %.0f",
                len(codes), 50 * float(cond[:, 0].mean() + 1),
                float(np.expm1(np.median(cond[:, 1].cpu().numpy()) * 0.7 + 3.4)))

    config = CodeDiffusionConfig(
        id_dim=codes.shape[1], hidden=args.hidden, blocks=args.blocks, guidance=args.guidance,
        code_mean=codes.mean(0).tolist(), code_std=codes.std(0).clamp(min=1e-4).tolist(),
        codes_sha256=codes_fingerprint(codes_dir), code_probes_sha256=probes.code_fingerprint(), novelty_cos=novelty,
        conditions=conditions, tone_ceiling=args.tone_ceiling,
        group_probe_sha256=probes.group_fingerprint() if groups is not None else "",
    )
    teacher = CodeDiffusion(config).to(device)
    x0_all = teacher.standardise(codes)
    alphas = make_scheduler(config, "teacher").alphas_cumprod.to(device)
    opt_teacher = torch.optim.AdamW(teacher.parameters(), lr=args.lr, weight_decay=1e-4)
    state = {"teacher": 0, "distill": 0, "seconds": 0.0}
    lcm_state = target_state = opt_lcm_state = None
    checkpoint = out / "checkpoint.pt"
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        if saved["config"] != config.__dict__:
            raise ConfigError(f"{checkpoint} was written with other settings or data; use a new --output")
        teacher.load_state_dict(saved["teacher"])
        opt_teacher.load_state_dict(saved["opt_teacher"])
        state = saved["state"]
        lcm_state, target_state, opt_lcm_state = saved.get("lcm"), saved.get("target"), saved.get("opt_lcm")
        logger.info("resumed from %s: %s", checkpoint, state)

    start = time.time()
    budget = args.minutes * 60.0
    teacher_deadline = start + budget * shares[0] / sum(shares)
    generator = torch.Generator(device="cpu").manual_seed(args.seed + state["teacher"] + state["distill"])
    log: dict[str, float] = {}

    row_weights = group_balance(groups, args.balance_groups) if groups is not None and args.balance_groups else None

    def rows(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if row_weights is None:
            idx = torch.randint(0, len(x0_all), (n,), generator=generator).to(device)
        else:
            idx = torch.multinomial(row_weights, n, replacement=True, generator=generator).to(device)
        return x0_all[idx], cond[idx]

    def report(phase: str, value: float) -> None:
        log.setdefault(f"{phase}_start", value)  # the first loss of this run, for comparison
        log[phase] = 0.98 * log.get(phase, value) + 0.02 * value
        if state[phase] % 500 == 0:
            logger.info("%s step %d loss %.4f", phase, state[phase], log[phase])

    lcm = target = opt_lcm = None

    def save() -> None:
        write_checkpoint(checkpoint, config=config.__dict__, teacher=teacher.state_dict(),
                         opt_teacher=opt_teacher.state_dict(), state=dict(state),
                         lcm=None if lcm is None else lcm.state_dict(),
                         target=None if target is None else target.state_dict(),
                         opt_lcm=None if opt_lcm is None else opt_lcm.state_dict())

    last_save = time.time()
    teacher.train()
    while state["teacher"] < args.teacher_steps and time.time() < teacher_deadline:
        x0, c = rows(args.batch)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        t = torch.randint(0, config.num_train_timesteps, (len(x0),), generator=generator).to(device)
        a = alphas[t]
        xt = a.sqrt()[:, None] * x0 + (1 - a).sqrt()[:, None] * noise
        keep = torch.rand(len(x0), generator=generator).to(device) >= args.cond_drop
        loss = F.mse_loss(teacher(xt, t, c, keep), noise)
        opt_teacher.zero_grad(set_to_none=True)
        loss.backward()
        opt_teacher.step()
        state["teacher"] += 1
        report("teacher", loss.item())
        if time.time() - last_save > args.checkpoint_minutes * 60:
            save()
            last_save = time.time()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.save_pretrained(out / "teacher")

    lcm = copy.deepcopy(teacher)  # the copy carries its own config
    lcm.config.kind = "lcm"
    for p in lcm.parameters():
        p.requires_grad_(True)
    target = copy.deepcopy(lcm)
    if lcm_state is not None:
        lcm.load_state_dict(lcm_state)
        target.load_state_dict(target_state)
    for p in target.parameters():
        p.requires_grad_(False)
    opt_lcm = torch.optim.AdamW(lcm.parameters(), lr=args.lr_distill, weight_decay=1e-4)
    if opt_lcm_state is not None:
        opt_lcm.load_state_dict(opt_lcm_state)
    ratio = config.num_train_timesteps // config.original_inference_steps
    grid = torch.arange(1, config.original_inference_steps + 1, device=device) * ratio - 1
    deadline = start + budget
    lcm.train()
    while state["distill"] < args.distill_steps and time.time() < deadline:
        x0, c = rows(args.batch)
        n = torch.randint(0, len(grid), (len(x0),), generator=generator).to(device)
        t = grid[n]
        t_prev = (t - ratio).clamp(min=0)
        a, a_prev = alphas[t], alphas[t_prev]
        noise = torch.randn(x0.shape, generator=generator).to(device)
        xt = a.sqrt()[:, None] * x0 + (1 - a).sqrt()[:, None] * noise
        c_skip, c_out = (s.flatten()[:, None] for s in boundary_scalings(t))
        pred = c_skip * xt + c_out * _origin(xt, lcm(xt, t, c), a)
        with torch.no_grad():
            eps = teacher.guided(xt, t, c, config.guidance)
            x_prev = a_prev.sqrt()[:, None] * _origin(xt, eps, a) + (1 - a_prev).sqrt()[:, None] * eps
            c_skip_p, c_out_p = (s.flatten()[:, None] for s in boundary_scalings(t_prev))
            goal = c_skip_p * x_prev + c_out_p * _origin(x_prev, target(x_prev, t_prev, c), a_prev)
        loss = (torch.sqrt((pred - goal) ** 2 + 1e-6) - 1e-3).mean()  # pseudo-Huber, as in the LCM paper
        opt_lcm.zero_grad(set_to_none=True)
        loss.backward()
        opt_lcm.step()
        with torch.no_grad():
            for p_t, p_s in zip(target.parameters(), lcm.parameters(), strict=True):
                p_t.mul_(args.ema).add_(p_s.detach(), alpha=1 - args.ema)
        state["distill"] += 1
        report("distill", loss.item())
        if time.time() - last_save > args.checkpoint_minutes * 60:
            save()
            last_save = time.time()
    state["seconds"] += time.time() - start
    save()
    target.eval()
    target.save_pretrained(out / "lcm")
    summary = {**{k: float(v) for k, v in state.items()},
               **{k if k.endswith("_start") else f"{k}_loss": v for k, v in log.items()}}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    logger.info("done: %s", summary)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idmrag train-code-lcm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="faces .npz from `idmrag prepare-data`")
    parser.add_argument("--output", required=True, help="run folder (checkpoint, teacher/, lcm/)")
    parser.add_argument("--codes", default=None, help="codes model folder (default: the packaged one)")
    parser.add_argument("--probes", default=None,
                        help="attribute probes of the renderer the codes are for (default: the packaged ones)")
    parser.add_argument("--sampler", default=None,
                        help="identity sampler whose training identities the samples must not copy (default: packaged)")
    parser.add_argument("--balance-groups", type=float, default=0.0,
                        help="with the group condition: sample training faces with weight count(group)^-POWER "
                             "(0: as the data holds them, 1: every perceived group equally often)")
    parser.add_argument("--conditions", default=",".join(GENDER_AGE_TONE),
                        help="what the codes are conditioned on: gender,age,tone (default, the packaged model's), "
                             "gender,age,tone,group (needs emb_dlib in the data and probes with a group probe) "
                             "or gender,age")
    parser.add_argument("--tone-ceiling", type=float, default=TONE_CEILING,
                        help="lightness above this conditions as this (L*, 0-255; see code_diffusion.TONE_CEILING)")
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--shares", default="0.6,0.4", help="time shares of teacher,distill")
    parser.add_argument("--teacher-steps", type=int, default=40_000)
    parser.add_argument("--distill-steps", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--lr-distill", type=float, default=1e-4)
    parser.add_argument("--cond-drop", type=float, default=0.1)
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--ema", type=float, default=0.95)
    parser.add_argument("--checkpoint-minutes", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(args)


if __name__ == "__main__":
    main()
