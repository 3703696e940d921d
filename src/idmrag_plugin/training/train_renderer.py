"""``idmrag train-renderer``: train the context-aware face renderer adversarially.

Each step draws a batch of aligned faces, blanks the inner face with a jittered ellipse and
asks the renderer to draw it back, for half the batch with the face's own identity code and
for the other half with another person's code. Losses:

* adversarial: a conditional patch discriminator (sees the mask) with the hinge loss,
  differentiable augmentation shared by real and fake, and a lazy R1 penalty;
* on own-identity rows: masked L1, a log-spectrum term (penalises blur) and discriminator
  feature matching;
* identity, judged by the frozen identity student (a light network distilled from FaceNet):
  pull towards the wanted identity's embedding, and on swapped rows the privacy hinge
  max(0, cos(drawn, original) - tau), which stops pushing once the face is in the impostor
  regime; optionally the same two terms judged by dlib's own network (torch port), or its
  hinge alone (``dlib_hinge``: no pull of a code's drawings towards one point);
* attributes: the frozen codes encoder's ``z_attr`` of the result stays the original's;
  with ``--probes`` (dlib-reader attribute probes) the perceived gender and age of the
  drawing, read by the probes from dlib's descriptor of it, stay the original's, and the
  swapped rows get the identity of a face of the same perceived gender and age band (as the
  engine's sampler picks pseudonyms), so that identity and age terms do not pull apart;
* landmarks (off by default): the drawing's five landmarks (eyes, nose tip, mouth corners),
  read by MTCNN's output network on the aligned crop (see
  :mod:`idmrag_plugin.training.landmark_judge`), stay the original's, in inter-ocular
  distances: pose and expression are kept while the identity changes;
* consistency (off by default): the swapped half of the batch comes in pairs of two people's
  photos drawn with one identity code, and the two drawings' identity embeddings (the student's,
  and dlib's where its network is loaded) should agree: the engine draws one pseudonym into all
  of a person's photos, and a renderer that follows each photo's geometry closely (the
  landmark term) otherwise lets the context leak into who the drawing looks like;
* speckle (off by default): the drawing's fine detail inside the mask beyond the real
  face's in the same photo, chroma plus a quarter of luma (see
  :mod:`idmrag_plugin.generation.speckle`): some codes are otherwise drawn as mottled masks
  of colour blotches that the discriminator does not object to.

``--init`` starts the renderer from trained weights (fine-tuning; a fresh discriminator).

The generator's weights are averaged (EMA); the EMA is what gets saved. One checkpoint,
resumed automatically, written every ``--checkpoint-every`` steps and when the time budget
(``--minutes``) runs out; ``OUTPUT/renderer`` (safetensors + config with sha256) and a
sample sheet ``OUTPUT/samples.png`` are refreshed at every checkpoint.
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
from idmrag_plugin.generation.renderer import (
    MASK_JITTER,
    FaceRenderer,
    RendererConfig,
    inpaint_mask,
)
from idmrag_plugin.generation.speckle import speckle_levels
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
from idmrag_plugin.training.train_codes import (
    FaceData,
    keyed_cache,
    weight_option,
    write_checkpoint,
)
from idmrag_plugin.weights import sha256_of

logger = logging.getLogger(__name__)

WEIGHTS = {"adv": 1.0, "rec": 5.0, "spectrum": 1.0, "fm": 5.0, "identity": 2.0, "hinge": 2.0, "attr": 0.0,
           "dlib": 0.0, "dlib_hinge": 0.0, "gender": 0.0, "age": 0.0, "speckle": 0.0, "landmarks": 0.0,
           "consistency": 0.0}
#: Share of the luma's excess detail in the speckle loss (luma has texture, chroma hardly any).
SPECKLE_LOSS_LUMA_SHARE = 0.25
#: Width of the perceived-age bands swap partners are drawn from, in log(1 + years)
PARTNER_AGE_BAND = 0.25


class PartnerBands:
    """The faces grouped by perceived gender and age band (sorted once): swap partners are
    drawn from a face's own group."""

    def __init__(self, gender: np.ndarray, log_age: np.ndarray, identity: np.ndarray,
                 band: float = PARTNER_AGE_BAND) -> None:
        self.keys = gender.astype(np.int64) * 1000 + np.floor(log_age / band).astype(np.int64)
        self.order = np.argsort(self.keys, kind="stable")
        self.sorted_keys = self.keys[self.order]
        self.identity = identity

    def draw(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """For each of ``rows``, another face of its group (another person where the group has
        one): whose identity code the swapped row is drawn with."""
        lo = np.searchsorted(self.sorted_keys, self.keys[rows], "left")
        hi = np.searchsorted(self.sorted_keys, self.keys[rows], "right")
        partners = np.empty(len(rows), dtype=np.int64)
        for out, row in enumerate(rows):
            pick = row
            for _ in range(4):  # a few tries at another person; tiny groups may hold only this one
                pick = int(self.order[rng.integers(lo[out], hi[out])])
                if pick != row and (self.identity[pick] < 0 or self.identity[pick] != self.identity[row]):
                    break
            partners[out] = pick
        return partners


def matched_partners(gender: np.ndarray, log_age: np.ndarray, identity: np.ndarray, rows: np.ndarray,
                     rng: np.random.Generator, band: float = PARTNER_AGE_BAND) -> np.ndarray:
    """:meth:`PartnerBands.draw` for one set of rows."""
    return PartnerBands(gender, log_age, identity, band).draw(rows, rng)


def pair_contexts(idx: np.ndarray, wanted: np.ndarray, half: int, partners: PartnerBands | None,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows and identity codes for the consistency term: in the swapped half (rows ``half:``,
    an even count) each odd row becomes another photo, of another person of the same perceived
    gender and age band where there are bands, drawn with the identity code of the even row
    before it. Returns new (idx, wanted)."""
    idx, wanted = idx.copy(), wanted.copy()
    first = np.arange(half, len(idx) - 1, 2)
    if partners is not None:
        idx[first + 1] = partners.draw(idx[first], rng)
    wanted[first + 1] = wanted[first]
    return idx, wanted


def pair_disagreement(emb: torch.Tensor) -> torch.Tensor:
    """Mean 1 - cosine between consecutive rows (0-1, 2-3, ...) of identity embeddings; an odd
    last row is left out."""
    pairs = emb.shape[0] // 2
    return (1 - F.cosine_similarity(emb[0 : 2 * pairs : 2], emb[1 : 2 * pairs : 2], dim=1)).mean()


def landmark_error(marks: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean distance (B,) between five landmarks (B, 5, 2) and the target's, in the target's
    inter-ocular distances."""
    iod = (target[:, 0] - target[:, 1]).norm(dim=1).clamp(min=1e-3)
    return (marks - target).norm(dim=2).mean(dim=1) / iod


def mask_bank(size: int, grow: float, count: int, rng: np.random.Generator) -> torch.Tensor:
    """``count`` jittered inpainting ellipses (count, 1, S, S): the training masks vary a little
    in size and position so the renderer does not learn one hole's exact border."""
    masks = [inpaint_mask(size, grow * float(rng.uniform(*MASK_JITTER)),
                          (float(rng.uniform(-0.02, 0.02)), float(rng.uniform(-0.02, 0.02))))
             for _ in range(count - 1)]
    masks.append(inpaint_mask(size, grow))  # the one used at inference is always in the bank
    return torch.from_numpy(np.stack(masks))[:, None]


class Frozen:
    """The frozen judges: the codes VAE (z_id, z_attr) and the identity student(s)."""

    def __init__(self, codes_dir: Path, student_path: Path, device: torch.device) -> None:
        self.codes = DisentangledFaceVAE.from_pretrained(codes_dir).to(device).eval()
        self.student = IdentityStudent.load(student_path).to(device).eval()
        for p in [*self.codes.parameters(), *self.student.parameters()]:
            p.requires_grad_(False)
        self.codes_size = self.codes.config.image_size
        self.student_fingerprint = sha256_of(student_path)
        from idmrag_plugin.generation.latent_diffusion import codes_fingerprint

        self.fingerprint = codes_fingerprint(codes_dir)

    def at_codes_size(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.codes_size:
            return x
        return F.interpolate(x, size=(self.codes_size, self.codes_size), mode="bilinear", antialias=True,
                             align_corners=False)

    def codes_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        id_mu, _, attr_mu, _ = self.codes.encode(self.at_codes_size(x))
        return id_mu, attr_mu

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(self.at_codes_size(x))

    def codes_of_all(self, images: torch.Tensor, cache: Path, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_id, z_attr) of every uint8 image, computed once and kept in ``cache`` (keyed by
        the codes model's weights and the images' count): the conditioning is then free."""
        def encode_all() -> dict[str, torch.Tensor]:
            ids, attrs = [], []
            with torch.no_grad():
                for start in range(0, images.shape[0], batch):
                    z_id, z_attr = self.codes_of(images[start : start + batch].float() / 127.5 - 1.0)
                    ids.append(z_id)
                    attrs.append(z_attr)
            return {"z_id": torch.cat(ids), "z_attr": torch.cat(attrs)}

        codes = keyed_cache(cache, f"{self.fingerprint}:{images.shape[0]}", encode_all, images.device)
        return codes["z_id"], codes["z_attr"]


def sample_sheet(renderer: FaceRenderer, frozen: Frozen, x: torch.Tensor, mask: torch.Tensor, path: Path) -> None:
    """Rows: original, the hole, own identity, two other identities."""
    import cv2

    with torch.no_grad():
        z_id, z_attr = frozen.codes_of(x)
        g = torch.Generator().manual_seed(0)
        rows = [x, x * (1 - mask), renderer(x, mask, z_id, z_attr, generator=g)]
        for shift in (1, 2):
            rows.append(renderer(x, mask, torch.roll(z_id, shift, 0), z_attr, generator=g))
    sheet = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)
    image = ((sheet.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def train(args: argparse.Namespace) -> dict[str, float]:
    from idmrag_plugin.generation.latent_diffusion import codes_fingerprint
    from idmrag_plugin.weights import CODES_VAE_DIR, packaged

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(resolve_device(args.device))
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    weights = {**WEIGHTS, **dict(args.weight or [])}
    frozen = Frozen(Path(args.codes) if args.codes else packaged(CODES_VAE_DIR),
                    Path(args.student) if args.student else packaged("identity_student.safetensors"), device)
    data = FaceData(Path(args.data), args.size, device)
    has_val = bool((np.load(args.data, allow_pickle=False)["split"] == "val").any())
    val = FaceData(Path(args.data), args.size, device, split="val") if has_val else data
    logger.info("training on %d faces, %d held out, at %d px on %s", len(data), len(val) if has_val else 0,
                args.size, device)
    probes = None
    if weights["gender"] > 0 or weights["age"] > 0 or args.probes:
        if not args.probes:
            raise ConfigError("gender/age weights need --probes (attribute probes with the dlib reader)")
        from idmrag_plugin.generation.attributes import AttributeProbes

        probes = AttributeProbes.load(packaged("attribute_probes.safetensors") if args.probes == "packaged"
                                      else args.probes)
        if probes.image_reader != "dlib":
            raise ConfigError(f"{args.probes} reads faces with {probes.image_reader!r}; the renderer's attribute "
                              "terms need probes with the dlib reader (`idmrag fit-attribute-probes --reader dlib`)")
    dlib_judge = None
    if weights["dlib"] > 0 or weights["dlib_hinge"] > 0 or probes is not None:
        from idmrag_plugin.engine.align import CANONICAL_ZOOM
        from idmrag_plugin.engine.dlib_resnet import DlibJudge
        from idmrag_plugin.weights import load_dlib_resnet

        dlib_judge = DlibJudge(load_dlib_resnet(), zoom=CANONICAL_ZOOM).to(device)
    landmark_judge = None
    if weights["landmarks"] > 0:
        from idmrag_plugin.training.landmark_judge import LandmarkJudge

        landmark_judge = LandmarkJudge().to(device)
    # data packed small for another machine leaves embeddings out: the identity student stands
    # in for FaceNet, and dlib's descriptors are the torch port's on the crops (as drawn faces are judged)
    data.measure_missing_embeddings(frozen.embed, dlib_judge, cache=out / "embeddings_cache.pt",
                                    key=f"{sha256_of(Path(args.data))}:{frozen.student_fingerprint}")
    init_dir = None if not args.init else packaged("renderer") if args.init == "packaged" else Path(args.init)
    start_from = FaceRenderer.from_pretrained(init_dir) if init_dir is not None else None
    init_sha = codes_fingerprint(init_dir) if init_dir is not None else ""
    config = RendererConfig(image_size=args.size, base_channels=args.base_channels, max_channels=args.max_channels,
                            id_dim=frozen.codes.config.id_dim, attr_channels=frozen.codes.config.attr_channels,
                            mask_grow=args.mask_grow, codes_sha256=frozen.fingerprint, init_sha256=init_sha,
                            lineage=(init_sha, *start_from.config.ancestors()) if start_from is not None else ())
    renderer = FaceRenderer(config).to(device)
    if start_from is not None:
        family = ("init_sha256", "lineage")
        if ({k: v for k, v in asdict(start_from.config).items() if k not in family}
                != {k: v for k, v in asdict(config).items() if k not in family}):
            raise ConfigError(f"--init {args.init} is a renderer with another config ({asdict(start_from.config)}); "
                              "match its sizes and channels, or train from scratch")
        renderer.load_state_dict(start_from.state_dict())
    ema = copy.deepcopy(renderer).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    disc = PatchDiscriminator(args.size, args.disc_channels).to(device)
    opt_g = torch.optim.Adam(renderer.parameters(), lr=args.lr, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(disc.parameters(), lr=args.lr_disc, betas=(0.0, 0.99))
    masks = mask_bank(args.size, args.mask_grow, 64, rng).to(device)
    state = {"step": 0, "images": 0, "seconds": 0.0}
    ckpt = Path(args.checkpoint or out / "checkpoint.pt")
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location=device, weights_only=False)
        if saved["config"] != asdict(config):
            raise ConfigError(f"{ckpt} holds a renderer with another config ({saved['config']}); "
                              "use another --output or delete the checkpoint")
        renderer.load_state_dict(saved["renderer"])
        ema.load_state_dict(saved["ema"])
        disc.load_state_dict(saved["disc"])
        opt_g.load_state_dict(saved["opt_g"])
        opt_d.load_state_dict(saved["opt_d"])
        state = saved["state"]
        rng = np.random.default_rng(args.seed + int(state["step"]))
        logger.info("resumed from %s at step %d", ckpt, state["step"])
    shown = val if len(val) >= 8 else data  # the sample sheet shows held-out faces when there are any
    vx = shown.images[torch.as_tensor(np.random.default_rng(1).choice(len(shown), 8, replace=False), device=device)]
    vx = vx.float() / 127.5 - 1.0
    vmask = masks[-1:].expand(vx.shape[0], -1, -1, -1)

    def save() -> None:
        write_checkpoint(ckpt, renderer=renderer.state_dict(), ema=ema.state_dict(), disc=disc.state_dict(),
                         opt_g=opt_g.state_dict(), opt_d=opt_d.state_dict(), state=state, config=asdict(config))
        ema.save_pretrained(out / "renderer")
        sample_sheet(ema, frozen, vx, vmask, out / "samples.png")

    codes_id, codes_attr = frozen.codes_of_all(data.images, out / "codes_cache.pt")
    partners = None
    if probes is not None:  # every face's perceived gender and age, read once
        raw = data.embeddings_dlib_raw.cpu().numpy().astype(np.float64)
        gender_w, gender_b = probes.image_gender
        age_w, age_b = probes.image_age
        perceived_female = raw @ gender_w + gender_b > 0.0
        partners = PartnerBands(perceived_female, raw @ age_w + age_b, data.labels.cpu().numpy())
        gender_targets = torch.as_tensor(perceived_female, dtype=torch.float32, device=device)
        probe_gender = (torch.as_tensor(gender_w, dtype=torch.float32, device=device), float(gender_b))
        probe_age = torch.as_tensor(age_w, dtype=torch.float32, device=device)
    start = last_save = time.time()
    seconds_before = float(state["seconds"])
    half = args.batch // 2
    log: dict[str, float] = {}
    while state["step"] < args.steps and time.time() - start < args.minutes * 60:
        n = args.batch
        idx = torch.as_tensor(rng.integers(0, len(data), n), device=device)
        # Black-and-white photos are rare in the data but common in corpora: without these
        # the renderer draws colour faces into grey photos.
        grey = torch.as_tensor(rng.random(n) < args.grey_fraction, device=device)
        mask = masks[torch.as_tensor(rng.integers(0, len(masks), n), device=device)]
        # rows [half:] get another face's identity: one of the same perceived gender and age
        # band when there are probes, else another row's (a rotation within that half)
        if partners is not None:
            partner = torch.as_tensor(partners.draw(idx[half:].cpu().numpy(), rng), device=device)
            wanted = torch.cat([idx[:half], partner])
        else:
            perm = torch.arange(n, device=device)
            perm[half:] = torch.roll(perm[half:], 1)
            wanted = idx[perm]
        if weights["consistency"] > 0:
            paired_idx, paired_wanted = pair_contexts(idx.cpu().numpy(), wanted.cpu().numpy(), half, partners, rng)
            idx, wanted = torch.as_tensor(paired_idx, device=device), torch.as_tensor(paired_wanted, device=device)
        x = to_grey(data.images[idx].float() / 127.5 - 1.0, grey)
        e = data.embeddings[idx]
        z_attr = codes_attr[idx]
        wanted_e = data.embeddings[wanted]
        drawn = renderer(x, mask, codes_id[wanted], z_attr)

        # discriminator
        params = augment_params(n, device)
        terms = discriminator_step(disc, opt_d, x, drawn, mask, params, args.r1, args.r1_every, state["step"])

        # renderer
        fake_logits, fake_features = disc(*diff_augment(drawn, mask, params))
        with torch.no_grad():
            _, real_features = disc(*diff_augment(x, mask, params))
        own = slice(0, half)
        inside = mask[own].mean().clamp(min=1e-3)
        terms["adv"] = -fake_logits.mean()
        terms["rec"] = (drawn[own] - x[own]).abs().mean() / inside
        terms["spectrum"] = spectrum_loss(drawn[own], x[own])
        terms["fm"] = feature_matching([f[own] for f in fake_features], [f[own] for f in real_features])
        emb = frozen.embed(drawn)
        terms["identity"] = (1 - F.cosine_similarity(emb, wanted_e, dim=1)).mean()
        terms["hinge"] = F.relu(F.cosine_similarity(emb[half:], e[half:], dim=1) - args.tau).mean()
        if weights["consistency"] > 0:
            terms["consistency"] = pair_disagreement(emb[half:])
        if weights["speckle"] > 0:
            luma, chroma = speckle_levels(drawn, mask)
            with torch.no_grad():
                real_luma, real_chroma = speckle_levels(x, mask)
            terms["speckle"] = (F.relu(chroma - real_chroma) + SPECKLE_LOSS_LUMA_SHARE * F.relu(luma - real_luma)).mean()
        if landmark_judge is not None:
            with torch.no_grad():
                target_marks = landmark_judge(x)
            terms["landmarks"] = landmark_error(landmark_judge(drawn), target_marks).mean()
        if weights["attr"] > 0:  # costs as much as the rest of the renderer step on a CPU
            _, attr_again = frozen.codes_of(drawn)
            terms["attr"] = F.mse_loss(attr_again, z_attr)
        if dlib_judge is not None:
            d_raw = dlib_judge(drawn)
            original_raw = data.embeddings_dlib_raw[idx]
            if weights["consistency"] > 0:
                terms["consistency"] = terms["consistency"] + pair_disagreement(d_raw[half:] - data.dlib_mean)
            if weights["dlib"] > 0:
                # the pull is compared centred (see train_codes.centred); the hinge at the oracle's
                # own threshold, on the descriptors as the oracle compares them
                d_emb = F.normalize(d_raw - data.dlib_mean, dim=1)
                terms["dlib"] = ((1 - F.cosine_similarity(d_emb, data.embeddings_dlib[wanted], dim=1)).mean()
                                 + F.relu(F.cosine_similarity(d_raw[half:], original_raw[half:], dim=1)
                                          - args.dlib_tau).mean())
            if weights["dlib_hinge"] > 0:
                # the privacy hinge alone: no pull of every drawing of a code towards one point
                terms["dlib_hinge"] = F.relu(F.cosine_similarity(d_raw[half:], original_raw[half:], dim=1)
                                             - args.dlib_tau).mean()
            if partners is not None:
                terms["gender"] = F.binary_cross_entropy_with_logits(d_raw @ probe_gender[0] + probe_gender[1],
                                                                     gender_targets[idx])
                terms["age"] = ((d_raw - original_raw) @ probe_age).abs().mean()
        loss_g = sum(weights[k] * v for k, v in terms.items() if k not in ("d", "r1"))
        generator_step(opt_g, loss_g, ema, renderer, args.ema, state["step"])
        record_step(state, log, terms, n, seconds_before + time.time() - start)
        if checkpoint_due(state["step"], args.checkpoint_every, args.checkpoint_minutes, last_save):
            save()
            last_save = time.time()
    save()
    summary = {**{k: float(v) for k, v in state.items()}, **log}
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idmrag train-renderer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help=".npz from idmrag prepare-data (or pack-data)")
    parser.add_argument("--output", default="runs/renderer")
    parser.add_argument("--codes", default=None, help="codes VAE folder (default: the packaged one)")
    parser.add_argument("--student", default=None, help="identity student safetensors (default: packaged)")
    parser.add_argument("--init", default=None,
                        help="renderer folder to start from (fine-tuning), or 'packaged' for the packaged renderer")
    parser.add_argument("--probes", default=None,
                        help="attribute probes (dlib reader) for the gender/age terms and matched swap partners, "
                             "or 'packaged'")
    parser.add_argument("--size", type=int, default=64, help="training resolution (64 on a CPU, 128 on a GPU)")
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--max-channels", type=int, default=128)
    parser.add_argument("--disc-channels", type=int, default=32)
    parser.add_argument("--mask-grow", type=float, default=1.1, help="inpainted ellipse relative to the paste ellipse")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--grey-fraction", type=float, default=0.1, help="share of faces turned black and white")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--lr-disc", type=float, default=3e-4, help="discriminator learning rate")
    parser.add_argument("--r1", type=float, default=0.005,
                        help="R1 penalty weight (gamma). StyleGAN2's heuristic (0.05 at 64 px, batch 16) is for one "
                             "logit per image; this discriminator's 64 patch logits are summed, so the same gamma "
                             "penalises it far more: at 0.1 its loss sat at 1.95 (hinge; 2.0 = nothing told "
                             "apart) for 160k images")
    parser.add_argument("--r1-every", type=int, default=8, help="lazy R1: apply every N steps")
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--tau", type=float, default=0.5291,
                        help="hinge threshold in the student's (FaceNet-like) cosine; FaceNet's FAR 1e-2 level")
    parser.add_argument("--dlib-tau", type=float, default=0.9069, help="dlib hinge threshold (cosine), FAR 1e-2")
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
