"""``idmrag train-refiner``: train the face refiner (64 px drawing -> 128 px face) adversarially.

Each step draws a batch of 128 px aligned faces and blanks the inner face with a jittered
ellipse. Half the batch is refined from the real face brought down to the renderer's
resolution (area average, then a random blur and noise, so that a soft drawing is in the
range it has seen); the other half from what it will refine in use: the frozen renderer's
drawing of another person's identity code into the face's context. Losses:

* adversarial, on every row: the renderer's conditional patch discriminator (sees the mask)
  at 128 px, hinge loss, differentiable augmentation, lazy R1;
* on the real rows: masked L1 to the real face, the log-spectrum term and discriminator
  feature matching (the detail a 128 px face has);
* on the drawn rows: consistency, the refined face averaged back down to 64 px (or
  ``--consistency-size``) stays the drawing (detail is added to the pseudonym, no other face
  is drawn).

``--init`` starts the refiner from trained weights (fine-tuning; a fresh discriminator); its
sizes and channels are the starting refiner's.

The refiner's weights are averaged (EMA); the EMA is what gets saved. One checkpoint,
resumed automatically; ``OUTPUT/refiner`` (safetensors + config with sha256) and a sample
sheet ``OUTPUT/samples.png`` are refreshed at every checkpoint.
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
from idmrag_plugin.generation.refiner import FaceRefiner, RefinerConfig, downsample, upsample
from idmrag_plugin.generation.renderer import FaceRenderer
from idmrag_plugin.pipeline import resolve_device
from idmrag_plugin.training.adversarial import (
    PatchDiscriminator,
    augment_params,
    checkpoint_due,
    diff_augment,
    discriminator_step,
    feature_matching,
    generator_step,
    record_step,
    spectrum_loss,
    to_grey,
)
from idmrag_plugin.training.train_codes import FaceData, weight_option, write_checkpoint
from idmrag_plugin.training.train_renderer import Frozen, mask_bank

logger = logging.getLogger(__name__)

WEIGHTS = {"adv": 1.0, "rec": 5.0, "spectrum": 1.0, "fm": 5.0, "consistency": 5.0}


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (reflect padding); ``sigma`` in pixels, 0 = unchanged."""
    if sigma <= 0.05:
        return x
    radius = max(1, round(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def degrade(x: torch.Tensor, size: int, rng: np.random.Generator, max_blur: float, max_noise: float) -> torch.Tensor:
    """A real face as a soft drawing: area average to ``size`` px, a random blur, noise."""
    small = blur(downsample(x, size), float(rng.uniform(0.0, max_blur)))
    noise = torch.randn(small.shape, generator=torch.Generator().manual_seed(int(rng.integers(2**31))))
    return (small + float(rng.uniform(0.0, max_noise)) * noise.to(x.device)).clamp(-1.0, 1.0)


def sample_sheet(refiner: FaceRefiner, x: torch.Tensor, mask: torch.Tensor, real_drawing: torch.Tensor,
                 drawn: torch.Tensor, path: Path) -> None:
    """Rows: original, real face at 64 px resized, refined; a pseudonym drawing resized, refined."""
    import cv2

    size = x.shape[-1]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        rows = [x,
                mask * upsample(real_drawing, size) + (1 - mask) * x, refiner(x, mask, real_drawing, generator=g),
                mask * upsample(drawn, size) + (1 - mask) * x, refiner(x, mask, drawn, generator=g)]
    sheet = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)
    image = ((sheet.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def train(args: argparse.Namespace) -> dict[str, float]:
    from idmrag_plugin.weights import CODES_VAE_DIR, MODEL_CONFIG, RENDERER_DIR, packaged

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(resolve_device(args.device))
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    weights = {**WEIGHTS, **dict(args.weight or [])}
    renderer_dir = Path(args.renderer) if args.renderer else packaged(RENDERER_DIR)
    renderer = FaceRenderer.from_pretrained(renderer_dir).to(device).eval()
    for p in renderer.parameters():
        p.requires_grad_(False)
    small = renderer.config.image_size
    if args.size % 4 or args.size <= small:
        raise ConfigError(f"--size must be a multiple of 4 above the renderer's {small} px, got {args.size}")
    frozen = Frozen(Path(args.codes) if args.codes else packaged(CODES_VAE_DIR),
                    Path(args.student) if args.student else packaged("identity_student.safetensors"), device)
    if renderer.config.codes_sha256 and renderer.config.codes_sha256 != frozen.fingerprint:
        raise ConfigError(f"{renderer_dir} was trained on another codes model than {args.codes or 'the packaged one'}")
    data = FaceData(Path(args.data), args.size, device)
    has_val = bool((np.load(args.data, allow_pickle=False)["split"] == "val").any())
    shown = FaceData(Path(args.data), args.size, device, split="val") if has_val else data
    logger.info("refining %d px drawings to %d px on %d faces, on %s", small, args.size, len(data), device)
    config = RefinerConfig(image_size=args.size, input_size=small, base_channels=args.base_channels,
                           mid_channels=args.mid_channels, deep_channels=args.deep_channels, blocks=args.blocks,
                           mask_grow=renderer.config.mask_grow,
                           renderer_sha256=json.loads((renderer_dir / MODEL_CONFIG).read_text()).get("sha256", ""))
    refiner = FaceRefiner(config).to(device)
    if args.init:
        from idmrag_plugin.weights import REFINER_DIR

        start_from = FaceRefiner.from_pretrained(packaged(REFINER_DIR) if args.init == "packaged" else Path(args.init))
        shape = ("renderer_sha256",)
        if ({k: v for k, v in asdict(start_from.config).items() if k not in shape}
                != {k: v for k, v in asdict(config).items() if k not in shape}):
            raise ConfigError(f"--init {args.init} is a refiner with another config ({asdict(start_from.config)}); "
                              "match its sizes and channels, or train from scratch")
        refiner.load_state_dict(start_from.state_dict())
    ema = copy.deepcopy(refiner).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    disc = PatchDiscriminator(args.size, args.disc_channels).to(device)
    opt_g = torch.optim.Adam(refiner.parameters(), lr=args.lr, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.lr_disc, betas=(0.0, 0.99))
    masks = mask_bank(args.size, config.mask_grow, 64, rng).to(device)
    state = {"step": 0, "images": 0, "seconds": 0.0}
    ckpt = Path(args.checkpoint or out / "checkpoint.pt")
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        # a refiner may go on training on another renderer's drawings (its provenance moves on)
        if {**saved["config"], "renderer_sha256": ""} != {**asdict(config), "renderer_sha256": ""}:
            raise ConfigError(f"{ckpt} holds a refiner with another config ({saved['config']}); "
                              "use another --output or delete the checkpoint")
        refiner.load_state_dict(saved["refiner"])
        ema.load_state_dict(saved["ema"])
        disc.load_state_dict(saved["disc"])
        opt_g.load_state_dict(saved["opt_g"])
        opt_d.load_state_dict(saved["opt_d"])
        state = saved["state"]
        rng = np.random.default_rng(args.seed + int(state["step"]))
        logger.info("resumed from %s at step %d", ckpt, state["step"])

    codes_id, codes_attr = frozen.codes_of_all(data.images, out / "codes_cache.pt")

    def draw(x: torch.Tensor, mask: torch.Tensor, z_id: torch.Tensor, z_attr: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        """The frozen renderer's drawing (N,3,64,64) of ``z_id`` into the context of ``x``."""
        mask_small = (downsample(mask, small) > 0.5).float()
        with torch.no_grad():
            return renderer(downsample(x, small), mask_small, z_id, z_attr, generator=generator)

    sheet_rng = np.random.default_rng(1)
    pick = torch.as_tensor(sheet_rng.choice(len(shown), min(8, len(shown)), replace=False), device=device)
    vx = shown.images[pick].float() / 127.5 - 1.0
    vmask = masks[-1:].expand(vx.shape[0], -1, -1, -1)
    v_id, v_attr = frozen.codes_of(vx)
    v_drawn = draw(vx, vmask, torch.roll(v_id, 1, 0), v_attr, torch.Generator().manual_seed(2))
    v_real = degrade(vx, small, np.random.default_rng(3), 0.0, 0.0)

    def save() -> None:
        write_checkpoint(ckpt, refiner=refiner.state_dict(), ema=ema.state_dict(), disc=disc.state_dict(),
                         opt_g=opt_g.state_dict(), opt_d=opt_d.state_dict(), state=state, config=asdict(config))
        ema.save_pretrained(out / "refiner")
        sample_sheet(ema, vx, vmask, v_real, v_drawn, out / "samples.png")

    start = last_save = time.time()
    seconds_before = float(state["seconds"])
    n, half = args.batch, args.batch // 2
    noise_gen = torch.Generator().manual_seed(args.seed + int(state["step"]))
    log: dict[str, float] = {}
    while state["step"] < args.steps and time.time() - start < args.minutes * 60:
        idx = torch.as_tensor(rng.integers(0, len(data), n), device=device)
        x = data.images[idx].float() / 127.5 - 1.0
        grey = torch.as_tensor(rng.random(n) < args.grey_fraction, device=device)
        x = to_grey(x, grey)
        mask = masks[torch.as_tensor(rng.integers(0, len(masks), n), device=device)]
        real_rows = degrade(x[:half], small, rng, args.max_blur, args.max_noise)
        swap = idx[half:].roll(1)
        drawn_rows = draw(x[half:], mask[half:], codes_id[swap], codes_attr[idx[half:]], noise_gen)
        drawn_rows = to_grey(drawn_rows, grey[half:])  # the engine greys a grey photo's drawn face
        drawings = torch.cat([real_rows, drawn_rows])
        refined = refiner(x, mask, drawings, generator=noise_gen)

        params = augment_params(n, device)
        terms = discriminator_step(disc, opt_d, x, refined, mask, params, args.r1, args.r1_every, state["step"])

        fake_logits, fake_features = disc(*diff_augment(refined, mask, params))
        with torch.no_grad():
            _, real_features = disc(*diff_augment(x, mask, params))
        real, drawn = slice(0, half), slice(half, n)
        inside = mask[real].mean().clamp(min=1e-3)
        terms["adv"] = -fake_logits.mean()
        terms["rec"] = (refined[real] - x[real]).abs().mean() / inside
        terms["spectrum"] = spectrum_loss(refined[real], x[real])
        terms["fm"] = feature_matching([f[real] for f in fake_features], [f[real] for f in real_features])
        held = args.consistency_size or small
        mask_small = downsample(mask[drawn], held)
        terms["consistency"] = ((downsample(refined[drawn], held) - downsample(drawn_rows, held)).abs()
                                * mask_small).mean() / mask_small.mean().clamp(min=1e-3)
        loss_g = sum(weights[k] * v for k, v in terms.items() if k not in ("d", "r1"))
        generator_step(opt_g, loss_g, ema, refiner, args.ema, state["step"])
        record_step(state, log, terms, n, seconds_before + time.time() - start)
        if checkpoint_due(state["step"], args.checkpoint_every, args.checkpoint_minutes, last_save):
            save()
            last_save = time.time()
    save()
    summary = {**{k: float(v) for k, v in state.items()}, **log}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idmrag train-refiner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help=".npz from idmrag prepare-data (or pack-data), 128 px crops")
    parser.add_argument("--output", default="runs/refiner")
    parser.add_argument("--renderer", default=None, help="renderer folder (default: the packaged one)")
    parser.add_argument("--codes", default=None, help="codes VAE folder (default: the packaged one)")
    parser.add_argument("--student", default=None, help="identity student safetensors (default: packaged)")
    parser.add_argument("--init", default=None,
                        help="start from a trained refiner: a folder (OUTPUT/refiner) or 'packaged'")
    parser.add_argument("--size", type=int, default=128, help="resolution it draws at (the engine's crop)")
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--mid-channels", type=int, default=32)
    parser.add_argument("--deep-channels", type=int, default=64)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--disc-channels", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--grey-fraction", type=float, default=0.1, help="share of faces turned black and white")
    parser.add_argument("--max-blur", type=float, default=1.0, help="largest blur (sigma, px at 64) of a real row")
    parser.add_argument("--max-noise", type=float, default=0.03, help="largest noise (std, [-1,1] scale) of a real row")
    parser.add_argument("--consistency-size", type=int, default=0,
                        help="resolution at which a refined drawing must stay the drawing (default: the "
                             "renderer's, 64 px); lower leaves the refiner free to restore a soft drawing's "
                             "detail above it")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--lr-disc", type=float, default=3e-4, help="discriminator learning rate")
    parser.add_argument("--r1", type=float, default=0.01,
                        help="R1 penalty weight (gamma); at 0.2 the discriminator's loss stayed at 2.0 "
                             "(nothing told apart) for 850 steps, at 0.01 it fell to 1.8-1.95 within 200")
    parser.add_argument("--r1-every", type=int, default=8, help="lazy R1: apply every N steps")
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--weight", type=weight_option(WEIGHTS), action="append",
                        help=f"loss weight NAME=VALUE (repeatable); defaults {WEIGHTS}")
    parser.add_argument("--steps", type=int, default=10_000_000)
    parser.add_argument("--minutes", type=float, default=60.0, help="time budget of this run")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    parser.add_argument("--checkpoint-minutes", type=float, default=0.0,
                        help="also checkpoint when this many minutes passed since the last (0: off)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (set it under CPU contention)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
