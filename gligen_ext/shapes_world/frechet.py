"""Image quality beside grounding: the Fréchet distance between feature sets of generated and real images.

FID (Heusel et al. 2017, https://arxiv.org/abs/1706.08500) fits a Gaussian to each set of features and measures

    d^2 = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)

The features are Inception-v3's 2048 pooled activations (torch-fidelity's TF-compatible port, the network behind
torchmetrics' FID) when torch-fidelity and its weights file are on this machine; nothing is ever downloaded.
Otherwise a substitute that needs nothing outside the shapes world: the base model's own VAE encoder, whose latents
were trained to describe exactly these images (see :class:`VaeLatentFeatures`). The two scales differ: compare
settings within one run, never a substitute FID with a published Inception FID.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's converted TF weights


class FeatureNetwork(Protocol):
    """Maps images (N, H, W, 3) uint8 RGB to features (N, D) float64; ``description`` says what they are."""

    name: str
    description: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to ``features_a`` (N, D) and ``features_b`` (M, D), N, M >= 2.

    The matrix square root comes from symmetric eigen-decompositions (no scipy): S_a^1/2 S_b S_a^1/2 is symmetric
    positive semi-definite and has the eigenvalues of S_a S_b, so its trace root is the sum of their square roots.
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: expected (N, D) and (M, D) features, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance: a covariance needs at least 2 samples per set, got {len(a)} and {len(b)}")
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _psd_sqrt(np.atleast_2d(cov_a))
    middle = root_a @ np.atleast_2d(cov_b) @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    distance = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(np.atleast_2d(cov_a + cov_b)) - 2.0 * cross
    return float(max(distance, 0.0))  # rounding can leave a tiny negative for identical sets


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


class VaeLatentFeatures:
    """FID substitute: statistics of the base model's VAE-encoder latents, pooled on a grid.

    Each image, scaled to [-1, 1], is encoded to its latent mean mu (C, h, w) (the distribution's mean, not a sample,
    so the features are deterministic). The latent is cut into ``grid`` x ``grid`` cells and each cell gives, per
    channel, the mean and the standard deviation of mu: 2 * C * grid^2 numbers (128 for a 4-channel latent on a 4 x 4
    grid). Cell means carry where each colour is; cell deviations carry edges and texture, so blur, noise and
    broken shapes move them.
    """

    name = "vae"

    def __init__(self, vae: nn.Module, *, grid: int = 4, batch_size: int = 64) -> None:
        self.vae, self.grid, self.batch_size = vae, grid, batch_size
        channels = vae.config.latent_channels
        self.description = (
            f"Fréchet distance of the base model's VAE-encoder features: the mean and standard deviation of the "
            f"latent mean in each cell of a {grid}x{grid} grid, per channel ({2 * channels * grid * grid} numbers "
            "per image); not comparable with Inception FID"
        )

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        parameter = next(self.vae.parameters())
        features = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch_size]))
            pixels = batch.permute(0, 3, 1, 2).to(parameter.device, parameter.dtype) / 127.5 - 1.0
            latent = self.vae.encode(pixels).latent_dist.mean.float()
            mean = nn.functional.adaptive_avg_pool2d(latent, self.grid)
            square = nn.functional.adaptive_avg_pool2d(latent**2, self.grid)
            std = (square - mean**2).clamp_min(0.0).sqrt()
            features.append(torch.cat([mean.flatten(1), std.flatten(1)], dim=1).double().cpu())
        return torch.cat(features).numpy()


class InceptionFeatures:
    """Standard FID features: Inception-v3 pool features (2048) from torch-fidelity, weights read from a local file."""

    name = "inception"
    description = "Fréchet Inception Distance on Inception-v3 pool features (torch-fidelity's TF-ported weights)"

    def __init__(self, weights: str | os.PathLike, *, device: str | torch.device = "cpu", batch_size: int = 32):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.network = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights)
        ).to(device)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        features = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + self.batch_size]))
            (pooled,) = self.network(batch.permute(0, 3, 1, 2).to(self.device))
            features.append(pooled.double().cpu())
        return torch.cat(features).numpy()


def local_inception_weights(path: str | os.PathLike | None = None) -> Path | None:
    """The Inception weights file when torch-fidelity is importable and the file exists (``path``, else torch hub's
    cache, where torch-fidelity keeps its download); None otherwise. Never downloads."""
    if importlib.util.find_spec("torch_fidelity") is None:
        return None
    candidate = Path(path) if path else Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    return candidate if candidate.is_file() else None


def feature_network(
    vae: nn.Module, *, kind: str = "auto", inception_weights: str | os.PathLike | None = None
) -> FeatureNetwork:
    """The features FID is computed on: ``kind`` "inception", "vae" or "auto" (Inception when available locally)."""
    if kind not in ("auto", "inception", "vae"):
        raise ValueError(f"fid features: expected 'auto', 'inception' or 'vae', got {kind!r}")
    weights = local_inception_weights(inception_weights) if kind != "vae" else None
    if kind == "inception" and weights is None:
        where = inception_weights or Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
        raise ValueError(
            f"fid features 'inception': needs the torch-fidelity package and its weights file at '{where}' (nothing "
            "is downloaded); install torch-fidelity and copy the file there, or use 'vae'"
        )
    if weights is not None:
        return InceptionFeatures(weights, device=next(vae.parameters()).device)
    return VaeLatentFeatures(vae)
