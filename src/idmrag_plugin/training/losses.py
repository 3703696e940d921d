"""Losses of the disentangled identity/attribute autoencoder."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)), summed over code dimensions, mean over the batch."""
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(dim=1).mean()


def cosine_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (1.0 - F.cosine_similarity(a, b, dim=1)).mean()


def supervised_contrastive(codes: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SupCon over rows with a known label (>= 0) that have at least one positive in the batch."""
    known = labels >= 0
    codes, labels = F.normalize(codes[known], dim=1), labels[known]
    if codes.shape[0] < 2:
        return codes.sum() * 0.0
    logits = codes @ codes.T / temperature
    eye = torch.eye(len(labels), dtype=torch.bool, device=codes.device)
    logits = logits.masked_fill(eye, float("-inf"))
    positives = (labels[:, None] == labels[None, :]) & ~eye
    has_positive = positives.any(dim=1)
    if not has_positive.any():
        return codes.sum() * 0.0
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    mean_pos = (log_prob.masked_fill(~positives, 0.0).sum(dim=1) / positives.sum(dim=1).clamp(min=1))
    return -mean_pos[has_positive].mean()


def same_identity_similarity(codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How much more alike two codes of one person are than codes of two different people.

    The mean cosine over same-identity pairs minus the mean over pairs with different (or
    unknown) identities, clamped at zero: a code free of identity scores 0. Rows labelled -1
    (no identity known) only serve as negatives.
    """
    unit = F.normalize(codes.flatten(1), dim=1)
    sims = unit @ unit.T
    eye = torch.eye(len(labels), dtype=torch.bool, device=codes.device)
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0) & ~eye
    different = ~same & ~eye
    if not same.any() or not different.any():
        return codes.sum() * 0.0
    return (sims[same].mean() - sims[different].mean()).clamp(min=0.0)


class CLUBEstimator(nn.Module):
    """CLUB upper bound on I(z_id; z_attr) with a Gaussian variational q(z_id | z_attr).

    ``learning_loss`` trains q (on detached codes); ``forward`` is the bound the
    autoencoder minimises (Cheng et al., 2020).
    """

    def __init__(self, attr_dim: int, id_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(attr_dim, hidden), nn.SiLU(), nn.Linear(hidden, id_dim))
        self.logvar = nn.Sequential(nn.Linear(attr_dim, hidden), nn.SiLU(), nn.Linear(hidden, id_dim), nn.Tanh())

    def log_likelihood(self, z_attr: torch.Tensor, z_id: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.mu(z_attr), self.logvar(z_attr)
        return (-((z_id - mu) ** 2) / logvar.exp() - logvar).sum(dim=1).mean()

    def learning_loss(self, z_attr: torch.Tensor, z_id: torch.Tensor) -> torch.Tensor:
        return -self.log_likelihood(z_attr.detach().flatten(1), z_id.detach())

    def forward(self, z_attr: torch.Tensor, z_id: torch.Tensor) -> torch.Tensor:
        a = z_attr.flatten(1)
        mu, logvar = self.mu(a), self.logvar(a)
        positive = -((z_id - mu) ** 2) / logvar.exp()
        shuffled = z_id[torch.randperm(z_id.shape[0], device=z_id.device)]
        negative = -((shuffled - mu) ** 2) / logvar.exp()
        return (positive.sum(dim=1) - negative.sum(dim=1)).mean() / 2.0


class AttributeIdentityAdversary(nn.Module):
    """Predicts the FaceNet embedding from z_attr; the autoencoder is penalised when it can.

    ``learning_loss`` trains the adversary on detached codes; ``forward`` is the leakage the
    autoencoder minimises: the positive part of the cosine between the adversary's guess and
    the true embedding (zero once z_attr carries no usable identity).
    """

    def __init__(self, attr_dim: int, embedding_dim: int = 512, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(attr_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, embedding_dim))

    def learning_loss(self, z_attr: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return cosine_loss(self.net(z_attr.detach().flatten(1)), embedding)

    def forward(self, z_attr: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(self.net(z_attr.flatten(1)), embedding, dim=1).clamp(min=0.0).mean()
