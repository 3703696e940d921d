"""Pseudonym codes from a conditional diffusion model, distilled into a latent consistency model.

The renderer draws a face from an identity code; this model writes that code. It is a
diffusion model over the codes model's ``z_id`` (the renderer's identity space), conditioned
on the perceived gender and age the renderer should draw (the readings of
:mod:`idmrag_plugin.generation.attributes`) and, in models trained with it, the lightness of the
person's face in their photo (:func:`~idmrag_plugin.generation.attributes.face_lightness`: without
it the model wrote pseudonyms of light complexions for nearly everyone, since most training faces
are light, and dark-skinned people were drawn with light-skinned features) and the person's
perceived group (:data:`~idmrag_plugin.generation.attributes.GROUP_LABELS`, probabilities read from
dlib's descriptor of their photo: with lightness alone, Black people still got white-featured
faces), trained on the codes
of real training faces
(so its samples lie on the identity manifold) with classifier-free guidance, then
consistency-distilled so that diffusers' ``LCMScheduler`` samples it in 1-4 steps with the
guidance built in. Its candidates still pass the identity sampler's rejection (distinct from
the original, realistic, nobody real) before the renderer draws them, and the oracles still
verify every drawing.

The denoiser is a residual MLP with FiLM from the timestep and the condition: the data are
128-d vectors, for which a 2-D U-Net has no spatial structure to exploit. The timestep
embedding and the schedulers are diffusers' own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from idmrag_plugin.errors import ConfigError
from idmrag_plugin.generation.attributes import GROUP_LABELS, Reading
from idmrag_plugin.generation.latent_diffusion import _diffusers, make_scheduler

KINDS = ("teacher", "lcm")
#: What a model can be conditioned on, in this order: gender (+1 for the data's label 1, -1
#: otherwise), standardised log-age, standardised face lightness ("tone") and the probabilities
#: of the perceived groups ("group", one value per label of ``GROUP_LABELS``, centred).
CONDITIONS = ("gender", "age", "tone", "group")
#: The conditions of models trained before the tone was one.
GENDER_AGE = ("gender", "age")
#: The conditions of models trained before the perceived group was one.
GENDER_AGE_TONE = ("gender", "age", "tone")
#: The condition sets a model may have (older models load as theirs).
CONDITION_SETS = (GENDER_AGE, GENDER_AGE_TONE, CONDITIONS)
#: A perceived group's probability p conditions as (p - 1/K) / GROUP_SCALE.
GROUP_SCALE = 0.4
#: log(1 + years) is centred and scaled by these before it conditions the model.
LOG_AGE_CENTER, LOG_AGE_SCALE = 3.4, 0.7
#: A face's lightness (CIELAB L*, OpenCV's 0-255) is centred and scaled by these.
TONE_CENTER, TONE_SCALE = 140.0, 30.0
#: Lightness above this conditions as this (the training faces' median, 155): the condition
#: is there so that darker faces get pseudonyms of their complexion; above the median a
#: photo's lightness says more about its exposure than about the person, and codes written for
#: the lightest tones were drawn speckled (all eight of a face at 208 against three of eight
#: unconditioned).
TONE_CEILING = 155.0


@dataclass
class CodeDiffusionConfig:
    kind: str = "teacher"  # "teacher": DDIM with classifier-free guidance; "lcm": distilled, LCMScheduler
    id_dim: int = 128
    hidden: int = 512
    blocks: int = 4
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    original_inference_steps: int = 50  # the DDIM grid the LCM was distilled on
    guidance: float = 2.0  # the teacher's guidance scale (the LCM was distilled against it)
    code_mean: list[float] = field(default_factory=list)  # per-dimension standardisation of the codes
    code_std: list[float] = field(default_factory=list)
    codes_sha256: str = ""  # the codes model whose z_id it models
    # The attribute probes whose code read-outs labelled its training codes: the code probes'
    # own fingerprint (AttributeProbes.code_fingerprint; refitting the image probes keeps it), or,
    # in models trained before it, the whole probes file's sha256.
    code_probes_sha256: str = ""
    probes_sha256: str = ""
    # For a model conditioned on the perceived group: the group probe that labelled its training
    # codes (AttributeProbes.group_fingerprint); the engine reads people with the same probe.
    group_probe_sha256: str = ""
    # Its samples may be no closer to a training identity's mean code than this: the 99th
    # percentile of held-out people's nearest training identity (0: the sampler's distinct_cos).
    novelty_cos: float = 0.0
    conditions: list[str] = field(default_factory=lambda: list(GENDER_AGE))
    tone_ceiling: float = TONE_CEILING  # lightness above it conditions as it (see TONE_CEILING)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if tuple(self.conditions) not in CONDITION_SETS:
            raise ConfigError(f"a code model is conditioned on one of {CONDITION_SETS}, got {self.conditions}")

    @property
    def on_tone(self) -> bool:
        return "tone" in self.conditions

    @property
    def on_group(self) -> bool:
        return "group" in self.conditions

    @property
    def condition_width(self) -> int:
        """Values per condition vector (the perceived group takes one per label)."""
        return len(self.conditions) - 1 + len(GROUP_LABELS) if self.on_group else len(self.conditions)


def condition_of(readings: Sequence[Reading], tones: Sequence[float] | np.ndarray | None = None,
                 tone_ceiling: float = TONE_CEILING, groups: np.ndarray | None = None) -> torch.Tensor:
    """(N, 2) conditioning vectors of perceived gender and age readings, (N, 3) with the
    faces' lightness ``tones`` (:func:`~idmrag_plugin.generation.attributes.face_lightness`),
    held to at most ``tone_ceiling`` (the model's ``config.tone_ceiling``), and (N, 3 + K) with
    the perceived groups' probabilities ``groups`` (N, K = len(GROUP_LABELS)) as well."""
    rows = [[1.0 if r.gender else -1.0, (r.log_age - LOG_AGE_CENTER) / LOG_AGE_SCALE] for r in readings]
    if tones is not None:
        if len(tones) != len(rows):
            raise ConfigError(f"{len(tones)} tones for {len(rows)} readings")
        rows = [[*row, (min(float(tone), tone_ceiling) - TONE_CENTER) / TONE_SCALE]
                for row, tone in zip(rows, tones, strict=True)]
    width = len(GENDER_AGE) + (tones is not None)
    if groups is not None:
        groups = np.asarray(groups, np.float64).reshape(-1, len(GROUP_LABELS))
        if tones is None or len(groups) != len(rows):
            raise ConfigError(f"group probabilities need tones too, one row per reading ({len(groups)} for {len(rows)})")
        if not np.all(np.isfinite(groups)) or groups.min(initial=0.0) < 0 or not np.allclose(groups.sum(axis=1), 1.0, atol=0.05):
            raise ConfigError("group probabilities must be non-negative and sum to 1 per row")
        centred = (groups - 1.0 / len(GROUP_LABELS)) / GROUP_SCALE
        rows = [[*row, *map(float, group)] for row, group in zip(rows, centred, strict=True)]
        width += len(GROUP_LABELS)
    return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), width)


class _Block(nn.Module):
    """Pre-norm residual MLP block, modulated (scale, shift) by the timestep and condition."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.film = nn.Linear(hidden, 2 * hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.SiLU(), nn.Linear(2 * hidden, hidden))
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(emb).chunk(2, dim=1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class CodeDiffusion(nn.Module):
    """Predicts the noise in a standardised code at timestep ``t`` under a condition."""

    def __init__(self, config: CodeDiffusionConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CodeDiffusionConfig()
        embeddings = _diffusers().models.embeddings
        self.time_proj = embeddings.Timesteps(128, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = embeddings.TimestepEmbedding(128, config.hidden)
        self.cond_embed = nn.Sequential(nn.Linear(config.condition_width, config.hidden), nn.SiLU(),
                                        nn.Linear(config.hidden, config.hidden))
        self.null_cond = nn.Parameter(torch.zeros(config.hidden))  # "no condition", for guidance
        self.inp = nn.Linear(config.id_dim, config.hidden)
        self.blocks = nn.ModuleList(_Block(config.hidden) for _ in range(config.blocks))
        self.out = nn.Sequential(nn.LayerNorm(config.hidden), nn.Linear(config.hidden, config.id_dim))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)
        mean = torch.tensor(config.code_mean or [0.0] * config.id_dim)
        std = torch.tensor(config.code_std or [1.0] * config.id_dim)
        self.register_buffer("code_mean", mean, persistent=False)
        self.register_buffer("code_std", std, persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                keep_cond: torch.Tensor | None = None) -> torch.Tensor:
        """x (N, id_dim) standardised noisy codes, t (N,), cond (N, config.condition_width);
        ``keep_cond`` (N,) bool, False where the condition is dropped (guidance's unconditional
        branch)."""
        if cond.shape[-1] != self.config.condition_width:
            raise ConfigError(f"this code model is conditioned on {self.config.conditions}, "
                              f"got conditions of {cond.shape[-1]} values")
        emb = self.time_embed(self.time_proj(t.reshape(-1).expand(x.shape[0])).to(x.dtype))
        c = self.cond_embed(cond)
        if keep_cond is not None:
            c = torch.where(keep_cond[:, None], c, self.null_cond.expand_as(c))
        emb = nn.functional.silu(emb + c)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)

    def guided(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        """Classifier-free guided noise: uncond + scale * (cond - uncond)."""
        n = x.shape[0]
        both = self(torch.cat([x, x]), t.reshape(-1).expand(n).repeat(2), torch.cat([cond, cond]),
                    torch.cat([torch.ones(n, dtype=torch.bool, device=x.device),
                               torch.zeros(n, dtype=torch.bool, device=x.device)]))
        conditional, unconditional = both.chunk(2)
        return unconditional + scale * (conditional - unconditional)

    def standardise(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes - self.code_mean) / self.code_std

    def unstandardise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.code_std + self.code_mean

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype = torch.float16) -> Path:
        from idmrag_plugin.weights import save_model_folder

        return save_model_folder(self, asdict(self.config), directory, dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> CodeDiffusion:
        from idmrag_plugin.weights import load_model_folder

        meta, state = load_model_folder(directory, map_location, hint="; train one with `idmrag train-code-lcm`")
        model = cls(CodeDiffusionConfig(**meta))
        model.load_state_dict(state)
        return model.eval()


def generator_for(key: bytes) -> torch.Generator:
    """A torch generator seeded by a pseudonym key (the same key draws the same codes)."""
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") % (2**63))


@torch.inference_mode()
def sample_codes(model: CodeDiffusion, cond: torch.Tensor, steps: int,
                 generator: torch.Generator | None = None) -> np.ndarray:
    """Codes (N, id_dim) for conditions (N, model.config.condition_width), denoised from Gaussian noise in ``steps``."""
    if steps < 1:
        raise ConfigError(f"sampling steps must be at least 1, got {steps}")
    c = model.config
    device = model.code_mean.device
    cond = cond.to(device)
    scheduler = make_scheduler(c)
    scheduler.set_timesteps(steps, device=device)
    shape = (cond.shape[0], c.id_dim)
    x = torch.randn(shape, generator=generator).to(device) * scheduler.init_noise_sigma
    denoised = None
    for t in scheduler.timesteps:
        if c.kind == "lcm":
            eps = model(x, t, cond)
        else:
            eps = model.guided(x, t, cond, c.guidance)
        out = scheduler.step(eps, t, x, generator=generator)
        x = out.prev_sample
        denoised = getattr(out, "denoised", None)
    final = denoised if c.kind == "lcm" and denoised is not None else x
    return model.unstandardise(final).cpu().numpy().astype(np.float32)
