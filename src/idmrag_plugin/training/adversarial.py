"""The adversarial half of renderer training: a conditional patch discriminator,
differentiable augmentation, hinge losses, the R1 penalty and feature matching; and the
generator step and bookkeeping that the renderer's and the refiner's loops share."""

from __future__ import annotations

import logging
import time

import torch
from torch import nn
from torch.nn import functional as F

logger = logging.getLogger(__name__)


class PatchDiscriminator(nn.Module):
    """Judges (image, mask) pairs patch by patch.

    Plain convolutions kept in check by the R1 penalty (as StyleGAN2): measured here, a
    spectrally normalised version could not tell real faces from 4x-blurred ones after 120
    steps (hinge loss pinned at 2.0, its Lipschitz bound leaves patch logits no margin),
    while this one could within 80.

    Seeing the mask makes it conditional: it learns what a face drawn into *this* hole of
    *this* context should look like, so a seam or a colour mismatch at the mask's border is
    as visible to it as a blurry eye.
    """

    def __init__(self, image_size: int = 64, base_channels: int = 32, max_channels: int = 256) -> None:
        super().__init__()
        layers, channels, size, c = [], 4, image_size, base_channels
        while size > 8:
            layers.append(nn.Sequential(
                nn.Conv2d(channels, c, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.2),
            ))
            channels, size, c = c, size // 2, min(c * 2, max_channels)
        self.blocks = nn.ModuleList(layers)
        self.head = nn.Conv2d(channels, 1, 3, padding=1)
        # He initialisation for the leaky ReLUs. With torch's default the signal shrinks layer
        # by layer (mean |activation| 0.08 -> 0.015 over the four blocks at 128 px): after 500
        # refiner fine-tuning steps its logits were the same for real and 4x-blurred faces
        # (-0.049 +- 0.018), R1 ~0.001 and feature matching 0.000 (the loss at 2.0); with He
        # initialisation R1 and feature matching are alive from the first steps.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, a=0.2, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Patch logits (N, 1, 8, 8) and the intermediate features (for feature matching)."""
        h = torch.cat([image, mask * 2.0 - 1.0], dim=1)
        features = []
        for block in self.blocks:
            h = block(h)
            features.append(h)
        return self.head(h), features


def augment_params(n: int, device: torch.device, generator: torch.Generator | None = None,
                   translation: float = 0.0) -> dict[str, torch.Tensor]:
    """Random parameters of one DiffAugment draw (colour, and translation by up to
    ``translation`` of the side each way), shared by the tensors it is applied to so that real
    and fake of a pair see the same transform.

    Translation is off by default: measured on the packaged renderer's drawings against real
    faces (64 px, batch 16, gamma 0), a discriminator with colour jitter alone took its hinge
    loss from 2.2 to 1.4 in 125 steps; with whole-pixel shifts of up to 1/16 of the side added
    it stayed at 1.9-2.0 (with bilinear shifts, as before, at 2.0 for 2,000 steps of a fine-tune).
    """
    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(device)

    return {
        "brightness": rand(n, 1, 1, 1) - 0.5,
        "saturation": rand(n, 1, 1, 1) * 2.0,
        "contrast": rand(n, 1, 1, 1) + 0.5,
        "shift": (rand(n, 2) * 2.0 - 1.0) * 2.0 * translation,  # normalised coordinates span 2 per side
    }


def diff_augment(image: torch.Tensor, mask: torch.Tensor, params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable colour jitter (image only) and translation by whole pixels (image and
    mask together)."""
    x = image + params["brightness"]
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * params["saturation"] + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * params["contrast"] + mean
    n, _, h, w = x.shape
    if not bool(params["shift"].any()):
        return x, mask
    # Whole pixels: a fractional shift resampled bilinearly is a low-pass filter that blurs
    # the real faces as much as the drawn ones, hiding the very detail the discriminator judges.
    sides = torch.tensor([w, h], device=x.device, dtype=x.dtype)
    shift = torch.round(params["shift"].to(x.device, x.dtype) * sides / 2) * 2 / sides
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    m = F.grid_sample(mask, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return x, m


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def r1_penalty(discriminator: PatchDiscriminator, real: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared gradient norm of D's output at real images (Mescheder et al., 2018)."""
    real = real.detach().requires_grad_(True)
    logits, _ = discriminator(real, mask)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(dim=1).mean()


def feature_matching(fake: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """L1 between the discriminator's features of fake and (detached) real images."""
    return sum(F.l1_loss(f, r.detach()) for f, r in zip(fake, real, strict=True)) / len(fake)


def spectrum_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """L1 between log-amplitude spectra: penalises missing high frequencies (blur) that a
    pixel loss forgives."""
    def amplitude(x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(torch.fft.rfft2(x, norm="ortho").abs())

    return F.l1_loss(amplitude(fake), amplitude(real))


def discriminator_step(discriminator: PatchDiscriminator, optimizer: torch.optim.Optimizer, real: torch.Tensor,
                       fake: torch.Tensor, mask: torch.Tensor, params: dict[str, torch.Tensor], r1_gamma: float,
                       r1_every: int, step: int) -> dict[str, torch.Tensor]:
    """One discriminator update (hinge loss, lazy R1 every ``r1_every`` steps) on real and
    (detached) fake images under one augmentation draw; returns its loss terms."""
    real_logits, _ = discriminator(*diff_augment(real, mask, params))
    fake_logits, _ = discriminator(*diff_augment(fake.detach(), mask, params))
    terms = {"d": hinge_d_loss(real_logits, fake_logits)}
    loss = terms["d"]
    if step % r1_every == 0:
        terms["r1"] = r1_penalty(discriminator, *diff_augment(real, mask, params))
        loss = loss + r1_gamma * r1_every * 0.5 * terms["r1"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return terms


def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """Move the averaged weights towards the model's (warm-up: a short memory early on)."""
    with torch.no_grad():
        rate = min(decay, (1 + step) / (10 + step))
        for p_e, p in zip(ema.parameters(), model.parameters(), strict=True):
            p_e.lerp_(p.detach(), 1 - rate)


def generator_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, ema: nn.Module, model: nn.Module,
                   decay: float, step: int) -> None:
    """One optimiser step on ``loss``, then the EMA copy follows ``model``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    ema_update(ema, model, decay, step)


def record_step(state: dict, log: dict[str, float], terms: dict[str, torch.Tensor], images: int,
                seconds: float) -> None:
    """Count one step of ``images`` images in ``state``, keep its loss terms in ``log`` and
    log them every 50 steps."""
    state["step"] += 1
    state["images"] += images
    state["seconds"] = seconds
    log.update({k: float(v.detach()) for k, v in terms.items()})
    if state["step"] % 50 == 0:
        logger.info("step %d (%d images, %.1f img/s) %s", state["step"], state["images"],
                    state["images"] / max(state["seconds"], 1e-6), " ".join(f"{k}={v:.3f}" for k, v in log.items()))


def checkpoint_due(step: int, every: int, minutes: float, last_save: float) -> bool:
    """Every ``every`` steps, and also when ``minutes`` (0: off) passed since the last save."""
    return step % every == 0 or bool(minutes and time.time() - last_save > minutes * 60)


def to_grey(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x`` (N,3,H,W) with the ``rows`` (bool, N) turned black and white (Rec. 601 luma)."""
    luma = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
    return torch.where(rows[:, None, None, None], (x * luma).sum(dim=1, keepdim=True).expand_as(x), x)
