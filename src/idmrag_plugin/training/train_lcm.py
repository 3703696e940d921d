"""``idmrag train-lcm``: latent autoencoder -> conditional diffusion teacher -> latent consistency model.

Three phases share one time budget (``--minutes`` split by ``--shares``) and one checkpoint
(resumed automatically):

1. the face autoencoder (reconstruction + a light identity term through the identity student);
2. the teacher: the epsilon objective on latents conditioned on the face's own codes
   (z_id, z_attr from the frozen codes VAE), plus, on a swap pass conditioned on another face's
   z_id, (a) the privacy hinge max(0, sim(generated, original) - tau), which stops pushing once the
   face is in the impostor regime, and (b) an identity term pulling the generated face towards
   the identity the swapped z_id encodes. Identity is judged by the distilled identity student
   (FaceNet itself on a GPU is possible but not needed for these sizes);
3. consistency distillation (Luo et al., 2023): a copy of the teacher learns to map any point
   of a DDIM trajectory (``original_inference_steps`` grid) to the trajectory's origin, against
   an EMA target one teacher DDIM step later, with LCM's boundary-condition scalings, so that
   diffusers' ``LCMScheduler`` samples it in 1-4 steps.

Writes ``OUTPUT/teacher`` and ``OUTPUT/lcm`` (safetensors + config with sha256).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from idmrag_plugin.errors import ConfigError
from idmrag_plugin.generation.encoder import DisentangledFaceVAE
from idmrag_plugin.generation.identity_student import IdentityStudent
from idmrag_plugin.generation.latent_diffusion import (
    FaceLatentDiffusion,
    LatentDiffusionConfig,
    codes_fingerprint,
    make_scheduler,
)
from idmrag_plugin.pipeline import resolve_device
from idmrag_plugin.training.train_codes import FaceData, write_checkpoint

logger = logging.getLogger(__name__)

PHASES = ("autoencoder", "teacher", "distill")


def _alphas(config: LatentDiffusionConfig, device: torch.device) -> torch.Tensor:
    return make_scheduler(config, "teacher").alphas_cumprod.to(device)


def _predicted_origin(latents: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    a = alpha_bar.view(-1, 1, 1, 1)
    return (latents - (1 - a).sqrt() * eps) / a.sqrt()


def boundary_scalings(timesteps: torch.Tensor, timestep_scaling: float = 10.0, sigma_data: float = 0.5):
    """LCM's c_skip, c_out (the same formula as diffusers' LCMScheduler)."""
    scaled = timesteps.float() * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


def _identity_terms(
    judge: torch.nn.Module, faces: torch.Tensor, original: torch.Tensor, wanted: torch.Tensor,
    weight: torch.Tensor, tau: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Privacy hinge (stops once below ``tau``) and pull towards ``wanted``, as ``judge`` sees them."""
    emb = judge(faces)
    w = weight / weight.mean().clamp(min=1e-6)
    hinge = (F.relu(F.cosine_similarity(emb, original, dim=1) - tau) * w).mean()
    identity = ((1 - F.cosine_similarity(emb, wanted, dim=1)) * w).mean()
    return hinge, identity


def _load_frozen(codes_dir: Path, student_path: Path, device: torch.device) -> tuple[DisentangledFaceVAE, IdentityStudent]:
    codes = DisentangledFaceVAE.from_pretrained(codes_dir).to(device).eval()
    student = IdentityStudent.load(student_path).to(device).eval()
    for p in [*codes.parameters(), *student.parameters()]:
        p.requires_grad_(False)
    return codes, student


def train(args: argparse.Namespace) -> dict[str, float]:
    from idmrag_plugin.weights import CODES_VAE_DIR, packaged

    device = torch.device(resolve_device(args.device))
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    codes_dir = Path(args.codes) if args.codes else packaged(CODES_VAE_DIR)
    student_path = Path(args.student) if args.student else packaged("identity_student.safetensors")
    codes, student = _load_frozen(codes_dir, student_path, device)
    size = codes.config.image_size
    data = FaceData(Path(args.data), size, device)
    dlib_judge = None
    if args.dlib_weight > 0:
        if data.embeddings_dlib is None:
            raise ConfigError("--dlib-weight needs dlib embeddings (emb_dlib) in the data: see add_embeddings")
        from idmrag_plugin.engine.align import CANONICAL_ZOOM
        from idmrag_plugin.engine.dlib_resnet import DlibJudge
        from idmrag_plugin.weights import load_dlib_resnet

        dlib_judge = DlibJudge(load_dlib_resnet(), zoom=CANONICAL_ZOOM).to(device)
    shares = [float(s) for s in args.shares.split(",")]
    if len(shares) != 3 or min(shares) < 0 or sum(shares) <= 0:
        raise ConfigError("--shares wants three non-negative numbers: autoencoder,teacher,distill")
    config = LatentDiffusionConfig(
        image_size=size, id_dim=codes.config.id_dim, attr_channels=codes.config.attr_channels,
        attr_size=codes.config.attr_size, unet_channels=tuple(int(c) for c in args.unet_channels.split(",")),
        autoencoder_channels=tuple(int(c) for c in args.autoencoder_channels.split(",")),
        cross_attention_dim=args.cross_attention_dim,
        # the conditioning is this codes model's (z_id, z_attr): the generator refuses any other
        extra={"codes_sha256": codes_fingerprint(codes_dir)},
    )
    model = FaceLatentDiffusion(config).to(device)
    lcm: FaceLatentDiffusion | None = None
    target: FaceLatentDiffusion | None = None
    opt_ae = torch.optim.AdamW(model.autoencoder.parameters(), lr=args.lr_autoencoder, weight_decay=1e-4)
    teacher_params = [*model.unet.parameters(), *model.id_tokens.parameters()]
    opt_teacher = torch.optim.AdamW(teacher_params, lr=args.lr, weight_decay=1e-4)
    opt_lcm = None
    state: dict[str, object] = {"autoencoder": 0, "teacher": 0, "distill": 0, "latent_scale": 1.0}
    ckpt = Path(args.checkpoint or out / "checkpoint.pt")
    saved = torch.load(ckpt, map_location=device, weights_only=False) if ckpt.is_file() else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt_ae.load_state_dict(saved["opt_ae"])
        opt_teacher.load_state_dict(saved["opt_teacher"])
        state = saved["state"]
        model.config.latent_scale = float(state["latent_scale"])
        logger.info("resumed from %s at %s", ckpt, state)

    def save() -> None:
        write_checkpoint(
            ckpt, model=model.state_dict(), opt_ae=opt_ae.state_dict(), opt_teacher=opt_teacher.state_dict(),
            lcm=lcm.state_dict() if lcm is not None else None,
            target=target.state_dict() if target is not None else None,
            opt_lcm=opt_lcm.state_dict() if opt_lcm is not None else None,
            state=state, config=asdict(config),
        )

    start = time.time()
    budget = args.minutes * 60
    deadlines = np.cumsum(np.array(shares) / sum(shares) * budget) + start
    alphas = _alphas(config, device)
    log: dict[str, float] = {}

    def report(phase: str, terms: dict[str, torch.Tensor]) -> None:
        step = int(state[phase])
        log.update({f"{phase}/{k}": float(v.detach()) for k, v in terms.items()})
        if step % 50 == 0:
            logger.info("%s step %d %s", phase, step, " ".join(f"{k}={float(v.detach()):.4f}" for k, v in terms.items()))
        if step % args.checkpoint_every == 0:
            save()

    # Phase 1: autoencoder.
    model.autoencoder.train()
    while state["autoencoder"] < args.autoencoder_steps and time.time() < deadlines[0]:
        x, e, *_ = data.batch(args.batch, rng)
        recon = model.autoencoder.decode(model.autoencoder.encode(x))
        terms = {"rec": F.l1_loss(recon, x) + F.mse_loss(recon, x),
                 "id": (1 - F.cosine_similarity(student(recon), e, dim=1)).mean()}
        loss = terms["rec"] + args.autoencoder_identity * terms["id"]
        opt_ae.zero_grad(set_to_none=True)
        loss.backward()
        opt_ae.step()
        state["autoencoder"] += 1
        report("autoencoder", terms)
    model.autoencoder.eval()
    for p in model.autoencoder.parameters():
        p.requires_grad_(False)
    if state["teacher"] == 0:
        with torch.no_grad():
            latents = torch.cat([model.autoencoder.encode(data.batch(args.batch, rng)[0]) for _ in range(8)])
        state["latent_scale"] = float(1.0 / latents.std().clamp(min=1e-3))
        model.config.latent_scale = state["latent_scale"]
        logger.info("latent scale %.4f", state["latent_scale"])

    def codes_of(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            id_mu, _, attr_mu, _ = codes.encode(x)
        return id_mu, attr_mu

    # Phase 2: teacher.
    model.unet.train()
    while state["teacher"] < args.teacher_steps and time.time() < deadlines[1]:
        x, e, _, e_dlib = data.batch(args.batch, rng)
        z_id, z_attr = codes_of(x)
        with torch.no_grad():
            z0 = model.encode_latent(x)
        noise = torch.randn_like(z0)
        t = torch.randint(0, config.num_train_timesteps, (x.shape[0],), device=device)
        a = alphas[t]
        zt = a.sqrt().view(-1, 1, 1, 1) * z0 + (1 - a).sqrt().view(-1, 1, 1, 1) * noise
        tokens, attr = model.conditioning(z_id, z_attr)
        terms = {"diffusion": F.mse_loss(model.predict_noise(zt, t, tokens, attr), noise)}
        if args.hinge_weight > 0 or args.identity_weight > 0:
            perm = torch.roll(torch.arange(x.shape[0], device=device), 1)
            swap_tokens, _ = model.conditioning(z_id[perm], z_attr)
            eps = model.predict_noise(zt, t, swap_tokens, attr)
            faces = model.decode_latent(_predicted_origin(zt, eps, a)).clamp(-1, 1)
            terms["hinge"], terms["identity"] = _identity_terms(student, faces, e, e[perm], a, args.tau)
            if dlib_judge is not None and e_dlib is not None:
                terms["dlib_hinge"], terms["dlib_identity"] = _identity_terms(
                    dlib_judge, faces, e_dlib, e_dlib[perm], a, args.dlib_tau)
        loss = terms["diffusion"] + args.hinge_weight * terms.get("hinge", 0.0) + args.identity_weight * terms.get(
            "identity", 0.0) + args.dlib_weight * (terms.get("dlib_hinge", 0.0) + terms.get("dlib_identity", 0.0))
        opt_teacher.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(teacher_params, 1.0)
        opt_teacher.step()
        state["teacher"] += 1
        report("teacher", terms)
    model.unet.eval()
    save()
    model.save_pretrained(out / "teacher", dtype=torch.float16)

    # Phase 3: consistency distillation.
    lcm = copy.deepcopy(model)  # the copy carries its own config
    lcm.config.kind = "lcm"
    target = copy.deepcopy(lcm)
    if saved is not None and saved.get("lcm") is not None:
        lcm.load_state_dict(saved["lcm"])
        target.load_state_dict(saved["target"])
    lcm_params = [*lcm.unet.parameters(), *lcm.id_tokens.parameters()]
    opt_lcm = torch.optim.AdamW(lcm_params, lr=args.lr_distill, weight_decay=1e-4)
    if saved is not None and saved.get("opt_lcm") is not None:
        opt_lcm.load_state_dict(saved["opt_lcm"])
    for p in [*model.parameters(), *target.parameters()]:
        p.requires_grad_(False)
    ratio = config.num_train_timesteps // config.original_inference_steps
    grid = torch.arange(1, config.original_inference_steps + 1, device=device) * ratio - 1  # DDIM grid, as LCMScheduler
    lcm.unet.train()
    while state["distill"] < args.distill_steps and time.time() < deadlines[2]:
        x, e, *_ = data.batch(args.batch, rng)
        z_id, z_attr = codes_of(x)
        swap = torch.rand(x.shape[0], device=device) < 0.5  # half the batch in the anonymization regime
        cond_id = torch.where(swap[:, None], z_id[torch.roll(torch.arange(x.shape[0], device=device), 1)], z_id)
        with torch.no_grad():
            z0 = model.encode_latent(x)
        n = torch.randint(0, len(grid), (x.shape[0],), device=device)
        t = grid[n]
        t_prev = (t - ratio).clamp(min=0)
        a, a_prev = alphas[t], alphas[t_prev]
        noise = torch.randn_like(z0)
        zt = a.sqrt().view(-1, 1, 1, 1) * z0 + (1 - a).sqrt().view(-1, 1, 1, 1) * noise
        tokens, attr = lcm.conditioning(cond_id, z_attr)
        c_skip, c_out = boundary_scalings(t)
        pred = c_skip * zt + c_out * _predicted_origin(zt, lcm.predict_noise(zt, t, tokens, attr), a)
        with torch.no_grad():
            t_tokens, t_attr = model.conditioning(cond_id, z_attr)
            eps_teacher = model.predict_noise(zt, t, t_tokens, t_attr)
            origin = _predicted_origin(zt, eps_teacher, a)
            z_prev = a_prev.sqrt().view(-1, 1, 1, 1) * origin + (1 - a_prev).sqrt().view(-1, 1, 1, 1) * eps_teacher
            g_tokens, g_attr = target.conditioning(cond_id, z_attr)
            c_skip_p, c_out_p = boundary_scalings(t_prev)
            goal = c_skip_p * z_prev + c_out_p * _predicted_origin(
                z_prev, target.predict_noise(z_prev, t_prev, g_tokens, g_attr), a_prev)
        # pseudo-Huber distance, as in the LCM paper
        terms = {"consistency": (torch.sqrt((pred - goal) ** 2 + 1e-6) - 1e-3).mean()}
        opt_lcm.zero_grad(set_to_none=True)
        terms["consistency"].backward()
        torch.nn.utils.clip_grad_norm_(lcm_params, 1.0)
        opt_lcm.step()
        with torch.no_grad():
            for p_t, p_s in zip(target.parameters(), lcm.parameters(), strict=True):
                p_t.mul_(args.ema).add_(p_s.detach(), alpha=1 - args.ema)
        state["distill"] += 1
        report("distill", terms)
    save()
    lcm.eval()
    target.eval()
    target.save_pretrained(out / "lcm", dtype=torch.float16)
    summary = {**{k: float(v) for k, v in state.items()}, **log, "minutes": (time.time() - start) / 60}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idmrag train-lcm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help=".npz from idmrag prepare-data")
    parser.add_argument("--output", default="runs/lcm")
    parser.add_argument("--codes", default=None, help="codes VAE folder (default: the packaged one)")
    parser.add_argument("--student", default=None, help="identity student safetensors (default: packaged)")
    parser.add_argument("--autoencoder-channels", default="32,64")
    parser.add_argument("--unet-channels", default="32,64")
    parser.add_argument("--cross-attention-dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4, help="teacher learning rate")
    parser.add_argument("--lr-autoencoder", type=float, default=1e-3)
    parser.add_argument("--lr-distill", type=float, default=1e-4)
    parser.add_argument("--autoencoder-identity", type=float, default=0.1)
    parser.add_argument("--hinge-weight", type=float, default=0.1, help="privacy hinge weight")
    parser.add_argument("--identity-weight", type=float, default=0.05, help="pull towards the swapped identity")
    parser.add_argument("--tau", type=float, default=0.5291,
                        help="hinge threshold in the student's (FaceNet-like) cosine; FaceNet's FAR 1e-2 level")
    parser.add_argument("--dlib-weight", type=float, default=0.0,
                        help="weight of the privacy hinge and identity terms judged by dlib's real network "
                             "(torch port; needs emb_dlib in the data; slow on a CPU)")
    parser.add_argument("--dlib-tau", type=float, default=0.9069,
                        help="dlib hinge threshold (cosine); dlib's FAR 1e-2 level")
    parser.add_argument("--ema", type=float, default=0.95, help="EMA decay of the consistency target")
    parser.add_argument("--autoencoder-steps", type=int, default=100_000)
    parser.add_argument("--teacher-steps", type=int, default=100_000)
    parser.add_argument("--distill-steps", type=int, default=100_000)
    parser.add_argument("--minutes", type=float, default=60.0, help="time budget of all three phases")
    parser.add_argument("--shares", default="0.2,0.5,0.3", help="budget shares: autoencoder,teacher,distill")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
