"""Data-free distillation: the student learns from the teacher without seeing one real training image.

Where the student's inputs come from (`DataFreeConfig.method`):

- ``dafl`` (Chen et al. 2019): a generator is trained against the frozen teacher so that the teacher is confident on
  its samples (one-hot loss), uses every class equally often (information entropy) and fires strongly (activation
  loss); the student is distilled on the same samples, one generator step then one student step per iteration.
- ``deepinversion`` (Yin et al. 2020): batches of images are optimised directly so that the statistics of every
  BatchNorm layer's input match that layer's running mean and variance, plus cross-entropy to sampled labels and
  image priors; the synthesised transfer set is then used for KD. The teacher must have BatchNorm layers.
- ``vae`` (few data): a small VAE is fitted to ``few_data`` real images; its samples, labelled by the teacher's
  logits, are the transfer set.
- ``noise``: KD on Gaussian-noise inputs, DAFL's baseline.

For ``dafl``, ``deepinversion`` and ``noise`` the function below has no argument through which training images could
arrive: it takes the teacher, the validation split (for monitoring only, always in eval mode) and nothing else.

The student trains in the one training loop, :func:`torchslim.training.fit`: what is data-free is a batch source
(:class:`DataFreeBatches`, one subclass per kind of input) that makes each batch, trains the DAFL generator between
student steps, and hands fit its state (generator, replay buffer, transfer set, random stream) to checkpoint.

Example:
    >>> cfg = DataFreeConfig(method="dafl", iterations=120)
    >>> info = distill_data_free(student, teacher, cfg, TrainConfig(epochs=200, batch_size=512, lr=2e-3),
    ...                          input_shape=(1, 32, 32), num_classes=10, val=data.val)   # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from torchslim.config import Config
from torchslim.distillation.losses import kd_loss
from torchslim.errors import TorchslimError, unknown_choice
from torchslim.tasks import forward
from torchslim.training.config import TrainConfig
from torchslim.training.loop import StopTraining, accuracy_of, fit, predict

METHODS = ("dafl", "deepinversion", "vae", "noise")


# ------------------------------------------------------------------------------------------------------------ configs
class DAFLConfig(Config):
    """DAFL's generator and its losses; defaults are the paper's MNIST setup.

    Example:
        >>> DAFLConfig(entropy_weight=5).generator_lr
        0.2
    """

    latent_dim: int = Field(100, ge=1, le=4096, description="size of the generator's Gaussian input z")
    generator_width: int = Field(128, ge=2, le=1024, description="channels of the generator's first conv block (DAFL: 128)")
    generator_lr: float = Field(0.2, gt=0, le=10, description="Adam learning rate of the generator (DAFL: 0.2)")
    onehot_weight: float = Field(1.0, ge=0, description="CE of the teacher against its own argmax")
    entropy_weight: float = Field(5.0, ge=0, description="−H(batch-mean teacher softmax), in nats")
    activation_weight: float = Field(0.1, ge=0, description="−mean |teacher features|")
    feature_layer: str | None = Field(
        None, description="teacher module whose output the activation loss reads; default: the input of the last "
                          "Linear layer. DAFL's LeNet-5 used the 120 conv features (`flatten` in lenet5-classic)")
    student_steps: int = Field(1, ge=1, le=64, description="student steps per generator step (DAFL: 1); the extra "
                                                           "ones draw batches from the replay buffer")
    replay_size: int = Field(0, ge=0, le=1_000_000, description="recent generated samples kept, with the teacher's logits, for "
                                                  "the extra student steps (0: none, DAFL's way)")
    adversarial_weight: float = Field(0.0, ge=0, description="generator term −w·mean|student − teacher logits| (DFAD, "
                                      "Fang et al. 2019): also seek samples the student still gets wrong (DAFL: 0)")
    student_shift: int = Field(0, ge=0, le=8, description="shift each student input by up to this many pixels (the "
                               "teacher labels the shifted image): cheap extra variety (DAFL: 0)")
    student_mixup: float = Field(0.0, ge=0, le=1, description="fraction of student inputs replaced by a mix "
                                 "λ·x_i + (1−λ)·x_j of two generated samples, λ ~ U(0, 1), labelled by the teacher: "
                                 "inputs between the generator's modes (DAFL: 0)")

    @model_validator(mode="after")
    def _replay_for_extra_steps(self) -> DAFLConfig:
        if self.student_steps > 1 and self.replay_size == 0:
            raise ValueError("dafl.student_steps > 1 draws the extra batches from a replay buffer: set "
                             "dafl.replay_size (e.g. 16384)")
        return self


class DeepInversionConfig(Config):
    """DeepInversion's image synthesis (no adaptive/competition term). The weights are set for inputs normalised
    to unit variance (measured on MNIST with a BatchNorm LeNet-5: a real batch scores BN distance ≈ 4, TV ≈ 0.6); the
    paper's own weights go with differently scaled losses.

    Example:
        >>> DeepInversionConfig(transfer_size=2048, iterations=500).bn_weight
        1.0
    """

    transfer_size: int = Field(10_000, ge=1, le=1_000_000, description="images synthesised (K)")
    batch_size: int = Field(256, ge=1, le=65536, description="images optimised together (BN statistics are per batch)")
    iterations: int = Field(2000, ge=1, le=1_000_000, description="Adam steps per synthesis batch")
    lr: float = Field(0.1, gt=0, le=10, description="Adam learning rate on the pixels (cosine-decayed)")
    bn_weight: float = Field(1.0, ge=0, description="feature-distribution regulariser: Σ BN-statistics distances")
    tv_weight: float = Field(5.0, ge=0, description="total variation prior (mean squared neighbour difference)")
    l2_weight: float = Field(0.0, ge=0, description="L2 prior: mean squared pixel")
    jitter: int = Field(2, ge=0, le=8, description="random roll of each batch by up to this many pixels")
    flip: bool = Field(False, description="random horizontal flips (off for digits, which are not symmetric)")


class FewDataVAEConfig(Config):
    """A small MLP VAE fitted to a few real images; its samples become the transfer set.

    Example:
        >>> FewDataVAEConfig(few_data=200).latent_dim
        16
    """

    few_data: int = Field(200, ge=1, description="real training images the VAE sees (a seeded random subset)")
    transfer_size: int = Field(20_000, ge=1, le=1_000_000, description="images sampled from the VAE (K)")
    latent_dim: int = Field(16, ge=1, le=4096)
    hidden: int = Field(512, ge=1, le=65536)
    epochs: int = Field(400, ge=1, le=1_000_000, description="passes of the VAE over its few images")
    batch_size: int = Field(64, ge=1, le=65536)
    lr: float = Field(1e-3, gt=0, le=10)
    beta: float = Field(1.0, ge=0, description="weight of the KL term (β-VAE)")


class DataFreeConfig(Config):
    """Data-free distillation: where the student's inputs come from, and the KD that uses them.

    One epoch is `iterations` student steps of `TrainConfig.batch_size` inputs, whatever the method.

    Example:
        >>> DataFreeConfig(method="noise", iterations=50).temperature
        1.0
    """

    method: Literal["dafl", "deepinversion", "vae", "noise"] = "dafl"
    iterations: int = Field(120, ge=1, le=1_000_000, description="student steps per epoch (DAFL: 120)")
    temperature: float = Field(1.0, gt=0, le=100, description="KD temperature (DAFL: 1)")
    ema_decay: float = Field(0.0, ge=0, lt=1, description="keep an exponential moving average of the student's "
                             "weights with this decay per student step (e.g. 0.9995), validate and keep it instead "
                             "of the raw weights; 0: off (DAFL: off)")
    dafl: DAFLConfig = Field(default_factory=DAFLConfig)
    deepinversion: DeepInversionConfig = Field(default_factory=DeepInversionConfig)
    vae: FewDataVAEConfig = Field(default_factory=FewDataVAEConfig)


# ------------------------------------------------------------------------------------------------------- the pieces
class DAFLGenerator(nn.Module):
    """DAFL's generator: z → Linear → w×(H/4)×(W/4) → BN → ×2 → conv3×3 w, BN, LeakyReLU(0.2) → ×2 → conv3×3 w/2,
    BN, LeakyReLU(0.2) → conv3×3 C → tanh → BN(affine=False).

    The final BN without affine makes every batch zero-mean, unit-variance per channel: the scale of normalised data.

    Example:
        >>> DAFLGenerator(100, (1, 32, 32))(torch.randn(4, 100)).shape
        torch.Size([4, 1, 32, 32])
    """

    def __init__(self, latent_dim: int, output_shape: tuple[int, int, int], width: int = 128) -> None:
        super().__init__()
        c, h, w = output_shape
        if h % 4 or w % 4:
            raise TorchslimError(f"dafl: the generator upsamples twice by 2, so the input sides must be multiples of 4; "
                                 f"got {h}×{w}")
        self.width, self.init_size = width, (h // 4, w // 4)
        self.fc = nn.Linear(latent_dim, width * (h // 4) * (w // 4))
        self.bn0 = nn.BatchNorm2d(width)
        self.up1 = nn.Upsample(scale_factor=2)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        # eps=0.8 as in DAFL's released code (`nn.BatchNorm2d(128, 0.8)`: the second positional argument is eps).
        self.bn1 = nn.BatchNorm2d(width, eps=0.8)
        self.act1 = nn.LeakyReLU(0.2)
        self.up2 = nn.Upsample(scale_factor=2)
        self.conv2 = nn.Conv2d(width, width // 2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(width // 2, eps=0.8)
        self.act2 = nn.LeakyReLU(0.2)
        self.conv3 = nn.Conv2d(width // 2, c, 3, padding=1)
        self.tanh = nn.Tanh()
        self.bn3 = nn.BatchNorm2d(c, affine=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.fc(z).view(len(z), self.width, *self.init_size))
        x = self.act1(self.bn1(self.conv1(self.up1(x))))
        x = self.act2(self.bn2(self.conv2(self.up2(x))))
        return self.bn3(self.tanh(self.conv3(x)))


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Each image translated by its own (dy, dx) in [−max_shift, max_shift]; the edge pixels are repeated into the
    rows and columns it uncovers.

    Example:
        >>> random_shift(torch.ones(2, 1, 4, 4), 1, torch.Generator().manual_seed(0)).shape
        torch.Size([2, 1, 4, 4])
    """
    n, _, h, w = x.shape
    k = max_shift
    padded = F.pad(x, (k, k, k, k), mode="replicate")  # generated backgrounds are not 0 after normalisation
    dy = torch.randint(0, 2 * k + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * k + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * k)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


def random_mixup(x: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """A random `fraction` of the rows replaced by λ·x_i + (1 − λ)·x_j, with j another row of the batch (a random
    permutation) and λ ~ U(0, 1) per row; the other rows are returned unchanged.

    Example:
        >>> random_mixup(torch.ones(4, 1, 2, 2), 0.5, torch.Generator().manual_seed(0)).shape
        torch.Size([4, 1, 2, 2])
    """
    n = len(x)
    chosen = torch.rand(n, generator=gen) < fraction
    partner = torch.randperm(n, generator=gen)
    lam = torch.rand(n, generator=gen).view(n, *([1] * (x.dim() - 1)))
    mixed = lam * x + (1 - lam) * x[partner]
    return torch.where(chosen.view_as(lam), mixed, x)


def dafl_losses(teacher_logits: torch.Tensor, features: torch.Tensor) -> dict[str, torch.Tensor]:
    """DAFL's three generator losses on one batch (each to be minimised).

    - onehot: CE(teacher logits, their own argmax): the teacher should be sure of every sample.
    - entropy: −H(p̄) with p̄ = the batch mean of the teacher's softmax, in nats: minimising it pushes the batch's
      class histogram to uniform (DAFL's code uses log10, i.e. its weight 5 is 5/ln 10 ≈ 2.17 in nats).
    - activation: −mean |features|: samples that excite the teacher's features like real data does.

    Example:
        >>> t = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
        >>> round(dafl_losses(t, torch.ones(2, 3))["entropy"].item(), 4)   # two classes equally often: −ln 2
        -0.6931
    """
    onehot = F.cross_entropy(teacher_logits, teacher_logits.argmax(1))
    mean_p = F.softmax(teacher_logits, dim=1).mean(0)
    entropy = (mean_p * mean_p.clamp_min(1e-12).log()).sum()  # = −H(p̄)
    activation = -features.abs().mean()
    return {"onehot": onehot, "entropy": entropy, "activation": activation}


class BNStatistics:
    """Forward hooks on every BatchNorm layer of a model; after a forward, `loss()` is DeepInversion's
    feature-distribution regulariser Σ_l ‖μ_l(x) − running_mean_l‖₂ + ‖σ²_l(x) − running_var_l‖₂, where μ_l, σ²_l
    are the batch statistics (biased variance) of layer l's input.

    Example:
        >>> with BNStatistics(teacher) as bn:   # doctest: +SKIP
        ...     logits = teacher(x)
        ...     r = bn.loss()
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.terms: list[torch.Tensor] = []
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        dims = [0] + list(range(2, x.dim()))  # every axis but the channels
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
        self.terms.append(torch.linalg.vector_norm(mean - module.running_mean)
                          + torch.linalg.vector_norm(var - module.running_var))

    def loss(self) -> torch.Tensor:
        """Sum over the layers of the last forward; clears the record for the next one."""
        total, self.terms = torch.stack(self.terms).sum(), []
        return total

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def __enter__(self) -> BNStatistics:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between vertical neighbours plus that between horizontal neighbours (N×C×H×W).

    Example:
        >>> total_variation(torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])).item()   # 0 vertically, 1 horizontally
        1.0
    """
    return (x[:, :, 1:, :] - x[:, :, :-1, :]).pow(2).mean() + (x[:, :, :, 1:] - x[:, :, :, :-1]).pow(2).mean()


class FewDataVAE(nn.Module):
    """A small MLP VAE on flattened images: D → hidden → (μ, log σ²) ∈ R^latent → hidden → D (Gaussian decoder)."""

    def __init__(self, input_shape: tuple[int, int, int], latent_dim: int = 16, hidden: int = 512) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        d = math.prod(input_shape)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, d))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).view(len(z), *self.input_shape)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, μ, log σ²); `noise` ~ N(0, I) is passed in so that the caller owns the randomness."""
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return self.decode(mu + (0.5 * logvar).exp() * noise), mu, logvar


def vae_losses(x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample means of ½‖x − x̂‖² (a unit-variance Gaussian decoder) and KL(N(μ, σ²) ‖ N(0, I))."""
    recon_loss = 0.5 * (x - recon).pow(2).flatten(1).sum(1).mean()
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean()
    return {"recon": recon_loss, "kl": kl}


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_teacher(method: str, teacher: nn.Module, teacher_name: str = "the teacher") -> None:
    """Raise a one-line TorchslimError when `method` cannot use this teacher (deepinversion needs BatchNorm).

    Example:
        >>> check_teacher("deepinversion", nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), "mlp")
        Traceback (most recent call last):
        ...
        torchslim.errors.TorchslimError: datafree method 'deepinversion' inverts BatchNorm statistics, but teacher 'mlp' has no BatchNorm layer; use a teacher with BatchNorm (e.g. resnet8, or lenet5-classic with batchnorm: true) or method dafl, vae or noise
    """
    if method not in METHODS:
        raise unknown_choice("datafree method", method, METHODS)
    if method == "deepinversion" and not has_batchnorm(teacher):
        raise TorchslimError(f"datafree method 'deepinversion' inverts BatchNorm statistics, but teacher "
                             f"'{teacher_name}' has no BatchNorm layer; use a teacher with BatchNorm (e.g. resnet8, or "
                             f"lenet5-classic with batchnorm: true) or method dafl, vae or noise")


def check_data_free(cfg: DataFreeConfig, teacher: nn.Module, input_shape: tuple[int, int, int], *,
                    n_train: int | None = None, teacher_name: str = "the teacher") -> None:
    """Everything about a data-free setup that can be wrong before any work: the teacher suits the method, DAFL's
    generator fits the input size and its feature layer exists, the few-data subset fits the training split.
    `torchslim validate` and `distill_data_free` both call it; each problem is one TorchslimError line.

    Example:
        >>> check_data_free(DataFreeConfig(method="dafl"), nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), (1, 6, 6))
        Traceback (most recent call last):
        ...
        torchslim.errors.TorchslimError: dafl: the generator upsamples twice by 2, so the input sides must be multiples of 4; got 6×6 (pad the data, e.g. data.pad_to=8)
    """
    check_teacher(cfg.method, teacher, teacher_name)
    if cfg.method == "dafl":
        h, w = input_shape[1:]
        if h % 4 or w % 4:
            raise TorchslimError(f"dafl: the generator upsamples twice by 2, so the input sides must be multiples of 4; "
                                 f"got {h}×{w} (pad the data, e.g. data.pad_to={4 * math.ceil(max(h, w) / 4)})")
        _feature_module(teacher, cfg.dafl.feature_layer)
    if cfg.method == "vae" and n_train is not None and cfg.vae.few_data > n_train:
        raise TorchslimError(f"vae.few_data={cfg.vae.few_data} is more than the {n_train} training images; "
                             f"valid: 1 to {n_train}")


def few_data_indices(n_train: int, count: int, seed: int) -> torch.Tensor:
    """The `count` training rows a few-data method may see: a seeded random subset, sorted.

    Example:
        >>> few_data_indices(10, 3, seed=0).tolist()
        [2, 4, 9]
    """
    if count > n_train:
        raise TorchslimError(f"vae.few_data={count} is more than the {n_train} training images; valid: 1 to {n_train}")
    return torch.randperm(n_train, generator=torch.Generator().manual_seed(seed))[:count].sort().values


# ---------------------------------------------------------------------------------------------- transfer-set makers
def synthesize_deepinversion(
    teacher: nn.Module, cfg: DeepInversionConfig, input_shape: tuple[int, int, int], num_classes: int,
    gen: torch.Generator, log: Callable[[str], None] = print, stage: str = "datafree",
) -> tuple[torch.Tensor, list[dict]]:
    """K images (K = cfg.transfer_size) optimised from noise against the frozen teacher, and one record per batch of
    the final loss terms. Each batch: Adam on the pixels for cfg.iterations steps of
    CE(teacher(x̃), targets) + bn_weight·Σ BN distances + tv_weight·TV(x̃) + l2_weight·mean(x̃²), x̃ = jittered x.

    Example:
        >>> x, curves = synthesize_deepinversion(bn_teacher, DeepInversionConfig(transfer_size=64, iterations=10),
        ...                                      (1, 8, 8), 10, torch.Generator().manual_seed(0))   # doctest: +SKIP
    """
    check_teacher("deepinversion", teacher)
    teacher.eval()  # BN layers use (and are compared with) their running statistics
    images, records = [], []
    with BNStatistics(teacher) as bn:
        for start in range(0, cfg.transfer_size, cfg.batch_size):
            t0 = time.perf_counter()
            n = min(cfg.batch_size, cfg.transfer_size - start)
            # Balanced targets: every class equally often in each batch, in a random order.
            targets = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
            x = torch.randn(n, *input_shape, generator=gen).requires_grad_(True)
            opt = torch.optim.Adam([x], lr=cfg.lr)
            for step in range(cfg.iterations):
                for group in opt.param_groups:  # cosine decay, as DeepInversion's lr_cosine_policy
                    group["lr"] = 0.5 * cfg.lr * (1 + math.cos(math.pi * step / cfg.iterations))
                xj = x
                if cfg.jitter:
                    dy, dx = torch.randint(-cfg.jitter, cfg.jitter + 1, (2,), generator=gen).tolist()
                    xj = torch.roll(xj, shifts=(dy, dx), dims=(2, 3))
                if cfg.flip and torch.rand((), generator=gen).item() < 0.5:
                    xj = xj.flip(3)
                logits = teacher(xj)
                terms = {"ce": F.cross_entropy(logits, targets), "bn": bn.loss(), "tv": total_variation(xj),
                         "l2": xj.pow(2).mean()}
                loss = terms["ce"] + cfg.bn_weight * terms["bn"] + cfg.tv_weight * terms["tv"] \
                    + cfg.l2_weight * terms["l2"]
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                hit = (teacher(x).argmax(1) == targets).float().mean().item()
                bn.loss()  # drop the statistics of this check forward
            records.append({"batch": len(records) + 1, "images": n, **{k: v.item() for k, v in terms.items()},
                            "loss": loss.item(), "target_accuracy": hit, "seconds": time.perf_counter() - t0})
            log(f"[{stage}] deepinversion batch {len(records)}: {start + n}/{cfg.transfer_size} images  ce "
                f"{terms['ce'].item():.3f}  bn {terms['bn'].item():.3f}  tv {terms['tv'].item():.3f}  "
                f"teacher agrees with targets {100 * hit:.1f}%  ({records[-1]['seconds']:.1f}s)")
            images.append(x.detach())
    return torch.cat(images), records


def synthesize_vae(
    few_data: torch.Tensor, cfg: FewDataVAEConfig, gen: torch.Generator, log: Callable[[str], None] = print,
    stage: str = "datafree",
) -> tuple[torch.Tensor, list[dict]]:
    """Fit a FewDataVAE to `few_data` (N×C×H×W, normalised like the teacher's inputs), then sample K images from it.
    Returns the samples and one record per VAE epoch (recon, kl).

    Example:
        >>> x, curves = synthesize_vae(data.train.tensors[0][:200], FewDataVAEConfig(), torch.Generator())  # doctest: +SKIP
    """
    vae = FewDataVAE(tuple(few_data.shape[1:]), cfg.latent_dim, cfg.hidden)
    for m in vae.modules():  # seeded from `gen`, so the caller's global RNG is neither used nor moved
        if isinstance(m, nn.Linear):
            bound = 1 / math.sqrt(m.in_features)
            with torch.no_grad():
                m.weight.uniform_(-bound, bound, generator=gen)
                m.bias.uniform_(-bound, bound, generator=gen)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg.lr)
    records = []
    for epoch in range(1, cfg.epochs + 1):
        sums, seen = defaultdict(float), 0
        for idx in torch.randperm(len(few_data), generator=gen).split(cfg.batch_size):
            x = few_data[idx]
            recon, mu, logvar = vae(x, torch.randn(len(x), cfg.latent_dim, generator=gen))
            terms = vae_losses(x, recon, mu, logvar)
            loss = terms["recon"] + cfg.beta * terms["kl"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in terms.items():
                sums[k] += v.item() * len(x)
            seen += len(x)
        records.append({"epoch": epoch, **{k: v / seen for k, v in sums.items()}})
    log(f"[{stage}] vae fitted to {len(few_data)} real images in {cfg.epochs} epochs: recon "
        f"{records[-1]['recon']:.2f}  kl {records[-1]['kl']:.2f}")
    vae.eval()
    with torch.no_grad():
        samples = torch.cat([vae.decode(torch.randn(len(chunk), cfg.latent_dim, generator=gen))
                             for chunk in torch.arange(cfg.transfer_size).split(1024)])
    return samples, records


# ------------------------------------------------------------------------------------------- the student's batches
def _feature_module(teacher: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """The teacher module DAFL's activation loss reads: `name`, or by default the last Linear layer (whose input is
    the penultimate features)."""
    modules = {n: m for n, m in teacher.named_modules() if n}
    if name is None:
        linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
        if not linears:
            raise TorchslimError("dafl: the teacher has no Linear layer to take features from; set dafl.feature_layer "
                                 f"to one of its modules: {', '.join(modules)}")
        return linears[-1], modules[linears[-1]]
    if name not in modules:
        raise unknown_choice("teacher module for dafl.feature_layer", name, modules)
    return name, modules[name]


def _feature_tap(teacher: nn.Module, name: str | None) -> tuple[dict, object, str]:
    """A hook that stores the teacher's features in `box["f"]` on every forward: the output of module `name`, or by
    default the input of the last Linear layer."""
    box: dict = {}
    found, module = _feature_module(teacher, name)
    if name is None:
        handle = module.register_forward_pre_hook(lambda m, inputs: box.__setitem__("f", inputs[0]))
        return box, handle, f"input of {found}"
    handle = module.register_forward_hook(lambda m, inputs, out: box.__setitem__("f", out))
    return box, handle, found


def _epoch_rows(n: int, batch_size: int, steps: int, gen: torch.Generator) -> torch.Tensor:
    """`steps` × `batch_size` row indices into a set of n rows: consecutive random permutations, cut into batches."""
    need = steps * batch_size
    order = torch.cat([torch.randperm(n, generator=gen) for _ in range(math.ceil(need / n))])
    return order[:need].view(steps, batch_size)


class DataFreeBatches:
    """The student's batches, a batch source for :func:`torchslim.training.fit`: per epoch `cfg.iterations`
    iterations, each one a fresh batch of `batch_size` inputs labelled by the teacher and then `student_steps` student
    steps. A batch is ``(x, teacher's argmax, teacher's logits)`` and :meth:`loss` is the KD loss on it; subclasses
    say where the inputs come from (:meth:`inputs`). Everything random is drawn from one generator seeded with `seed`,
    whose state fit checkpoints with the rest of :meth:`state_dict`, so a resumed run draws exactly the batches an
    uninterrupted one would. Every rank draws the same batches (``per_rank``): under torchrun each computes the run
    a single process would.

    Example:
        >>> batches = NoiseBatches(teacher, DataFreeConfig(method="noise"), batch_size=64, input_shape=(1, 28, 28),
        ...                        num_classes=10, seed=0)                                      # doctest: +SKIP
        >>> fit(student, batches, data.val, TrainConfig(epochs=5), loss_fn=batches.loss)      # doctest: +SKIP
    """

    per_rank = True
    student_steps = 1

    def __init__(self, teacher: nn.Module, cfg: DataFreeConfig, *, batch_size: int, input_shape: tuple[int, int, int],
                 num_classes: int, seed: int) -> None:
        self.teacher, self.cfg, self.batch_size = teacher, cfg, batch_size
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self.sums: dict[str, float] = defaultdict(float)  # this epoch's per-iteration numbers, summed

    def __len__(self) -> int:
        return self.cfg.iterations * self.student_steps

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        self.sums = defaultdict(float)
        for step in range(1, self.cfg.iterations + 1):
            x, t_logits = self.inputs(step)
            self.sums["teacher_confidence"] += F.softmax(t_logits, 1).max(1).values.mean().item()
            for k in range(self.student_steps):
                xs, ts = self.student_inputs(k, x, t_logits)
                yield xs, ts.argmax(1), ts

    def inputs(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Iteration `step`'s fresh inputs (N×C×H×W) and the teacher's logits on them (N×classes), both detached."""
        raise NotImplementedError

    def student_inputs(self, k: int, x: torch.Tensor, t_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs and teacher logits of the iteration's k-th student step (k = 0, 1, ...): by default its own."""
        return x, t_logits

    def loss(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, t_logits: torch.Tensor):
        """Hinton KD on the teacher's soft targets alone (alpha=0: there are no labels; `labels` is its argmax)."""
        s_logits = forward(model, x)
        loss = kd_loss(s_logits, t_logits, labels, self.cfg.temperature, 0.0)
        # Means per iteration (over its student steps), as data-free curves have always been reported.
        self.sums["loss_kd"] += loss.item() / self.student_steps
        self.sums["agreement"] += (s_logits.argmax(1) == labels).float().mean().item() / self.student_steps
        return loss, s_logits

    def metrics(self) -> dict[str, float]:
        """The epoch's means per iteration (fit adds them to the epoch's record)."""
        return {k: v / self.cfg.iterations for k, v in self.sums.items()}

    def state_dict(self) -> dict:
        return {"rng": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["rng"])

    def info(self) -> dict:
        """What the run's info shows of the inputs."""
        return {}

    def close(self) -> None:
        """Remove any hook this source put on the teacher."""


class NoiseBatches(DataFreeBatches):
    """Gaussian noise, N(0, 1) per pixel, fresh every step: DAFL's baseline."""

    def inputs(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(self.batch_size, *self.input_shape, generator=self.gen)
        with torch.no_grad():
            return x, self.teacher(x)


class TransferSetBatches(DataFreeBatches):
    """Batches of a transfer set that `synthesize(gen)` makes once (DeepInversion, a few-data VAE), labelled by the
    teacher once (nothing augments it, so its logits never change); each epoch cuts consecutive random permutations
    of it into batches. The set is made on first use: a resumed run restores it from the checkpoint instead."""

    def __init__(self, teacher: nn.Module, cfg: DataFreeConfig, *,
                 synthesize: Callable[[torch.Generator], tuple[torch.Tensor, list[dict]]], **kw) -> None:
        super().__init__(teacher, cfg, **kw)
        self.synthesize = synthesize
        self.transfer: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self.synthesis: list[dict] = []  # one record per synthesis batch or VAE epoch
        self.synthesis_seconds: float | None = None

    def transfer_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images K×C×H×W, the teacher's logits K×classes), synthesised and labelled on the first call."""
        if self.transfer is None:
            t0 = time.perf_counter()
            self.transfer, self.synthesis = self.synthesize(self.gen)
            self.synthesis_seconds = time.perf_counter() - t0
        if self.logits is None:
            self.logits = predict(self.teacher, self.transfer)
        return self.transfer, self.logits

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        self.rows = _epoch_rows(len(self.transfer_set()[0]), self.batch_size, self.cfg.iterations, self.gen)
        yield from super().__iter__()

    def inputs(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.rows[step - 1]
        return self.transfer[idx], self.logits[idx]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "transfer": self.transfer, "synthesis": json.dumps(self.synthesis),
                "synthesis_seconds": self.synthesis_seconds}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.transfer, self.logits = state["transfer"], None
        self.synthesis, self.synthesis_seconds = json.loads(state["synthesis"]), state["synthesis_seconds"]

    def info(self) -> dict:
        transfer, logits = self.transfer_set()
        mean_p = F.softmax(logits, 1).mean(0)
        return {"synthesis": self.synthesis, "synthesis_seconds": self.synthesis_seconds, "transfer_set": {
            "size": len(transfer),
            "teacher_class_histogram": torch.bincount(logits.argmax(1), minlength=self.num_classes).tolist(),
            "entropy_of_mean_softmax": -(mean_p * mean_p.clamp_min(1e-12).log()).sum().item()}}


class DAFLBatches(DataFreeBatches):
    """DAFL's inputs: every iteration is one step of a generator trained against the frozen teacher (one-hot,
    entropy and activation losses, and optionally the adversarial term against `student`), and then `student_steps`
    student steps: on its very (detached) samples as in DAFL's code, the extra ones on samples drawn from a replay
    buffer of recent ones; each shifted, mixed and relabelled by the teacher if `student_shift` / `student_mixup`.
    A generator whose samples have all become one constant stops training (:class:`StopTraining`)."""

    def __init__(self, teacher: nn.Module, cfg: DataFreeConfig, *, student: nn.Module, seed: int, **kw) -> None:
        super().__init__(teacher, cfg, seed=seed, **kw)
        self.student, self.student_steps, self.collapsed = student, cfg.dafl.student_steps, None
        with torch.random.fork_rng(devices=[]):  # seeded weights without moving the caller's global RNG
            torch.manual_seed(seed)
            self.generator = DAFLGenerator(cfg.dafl.latent_dim, self.input_shape, cfg.dafl.generator_width)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=cfg.dafl.generator_lr)
        self.replay = None
        if cfg.dafl.replay_size:
            if cfg.dafl.replay_size < self.batch_size:
                raise TorchslimError(f"dafl.replay_size={cfg.dafl.replay_size} must hold at least one batch "
                                     f"(train.batch_size={self.batch_size})")
            self.replay = {"x": torch.zeros(cfg.dafl.replay_size, *self.input_shape), "next": 0, "filled": 0,
                           "t": torch.zeros(cfg.dafl.replay_size, self.num_classes)}
        self.features, self._tap, self.feature_layer = _feature_tap(teacher, cfg.dafl.feature_layer)

    def inputs(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        cfg, bs = self.cfg.dafl, self.batch_size
        self.generator.train()
        x = self.generator(torch.randn(bs, cfg.latent_dim, generator=self.gen))
        t_logits = self.teacher(x)
        terms = dafl_losses(t_logits, self.features["f"])
        g_loss = cfg.onehot_weight * terms["onehot"] + cfg.entropy_weight * terms["entropy"] \
            + cfg.activation_weight * terms["activation"]
        if cfg.adversarial_weight:
            # The student's parameters get gradients here too; fit's optimizer zeroes them before the student's step.
            terms["adversarial"] = -(self.student(x) - t_logits).abs().mean()
            g_loss = g_loss + cfg.adversarial_weight * terms["adversarial"]
        self.optimizer.zero_grad(set_to_none=True)
        g_loss.backward()
        self.optimizer.step()
        x, t_logits = x.detach(), t_logits.detach()
        if x.std() < 1e-4:
            # Every tanh output saturated to the same value, so the final BN maps the batch to zeros and no gradient
            # reaches the generator again: the rest of the run would teach nothing.
            self.collapsed = {"epoch": self.epoch, "step": step}
            raise StopTraining(f"the generator collapsed at epoch {self.epoch}, step {step} (every sample constant); "
                               f"lower dafl.generator_lr (now {cfg.generator_lr}) or change the seed")
        if self.replay is not None:  # a ring buffer: the oldest samples are overwritten first
            replay = self.replay
            slots = (torch.arange(bs) + replay["next"]) % len(replay["x"])
            replay["x"][slots], replay["t"][slots] = x, t_logits
            replay["next"] = (replay["next"] + bs) % len(replay["x"])
            replay["filled"] = min(replay["filled"] + bs, len(replay["x"]))
        for k, v in terms.items():
            self.sums[f"loss_{k}"] += v.item()
        self.sums["loss_generator"] += g_loss.item()
        return x, t_logits

    def student_inputs(self, k: int, x: torch.Tensor, t_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg.dafl
        if k > 0:  # the extra student steps: earlier generated samples from the replay buffer
            idx = torch.randint(self.replay["filled"], (self.batch_size,), generator=self.gen)
            x, t_logits = self.replay["x"][idx], self.replay["t"][idx]
        if cfg.student_shift or cfg.student_mixup:
            if cfg.student_shift:
                x = random_shift(x, cfg.student_shift, self.gen)
            if cfg.student_mixup:
                x = random_mixup(x, cfg.student_mixup, self.gen)
            with torch.no_grad():
                t_logits = self.teacher(x)
        return x, t_logits

    def state_dict(self) -> dict:
        return {**super().state_dict(), "generator": self.generator.state_dict(),
                "generator_optimizer": self.optimizer.state_dict(), "replay": self.replay}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["generator_optimizer"])
        if self.replay is not None:
            self.replay.update(state["replay"])

    def info(self) -> dict:
        return {"feature_layer": self.feature_layer,
                **({"generator_collapsed": self.collapsed} if self.collapsed is not None else {})}

    def close(self) -> None:
        self._tap.remove()


# ------------------------------------------------------------------------------------------------------ the function
def distill_data_free(
    student: nn.Module,
    teacher: nn.Module,
    cfg: DataFreeConfig,
    train: TrainConfig,
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    val: torch.utils.data.TensorDataset | None = None,
    few_data: torch.Tensor | None = None,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    stage: str = "datafree",
    log: Callable[[str], None] = print,
) -> dict:
    """Distill `teacher` into `student` (in place) without training data; return per-epoch curves and accuracies.

    `val` is only evaluated (eval mode, no gradients) to report and keep the best epoch (`train.keep`). `few_data`
    (images only, no labels) is required by, and only allowed for, method ``vae``. `train` gives the student's
    epochs, batch size, optimizer, learning rate and schedule (and jitter, bn_l1, as for any training); an epoch is
    `cfg.iterations` iterations of ``dafl.student_steps`` (dafl) or one student step. The student is trained by
    :func:`torchslim.training.fit` on the method's :class:`DataFreeBatches`; with `checkpoint`, fit saves the whole
    state after each epoch (the generator, replay buffer or transfer set with it) and a run that finds the file
    continues from it, to the student an uninterrupted run would have made.

    Example:
        >>> info = distill_data_free(student, teacher, DataFreeConfig(method="dafl"), TrainConfig(epochs=200,
        ...     batch_size=512, lr=2e-3), input_shape=(1, 32, 32), num_classes=10, val=data.val)   # doctest: +SKIP
        >>> info["best_val_accuracy"]   # doctest: +SKIP
    """
    method = cfg.method
    check_data_free(cfg, teacher, input_shape)
    if (few_data is not None) != (method == "vae"):
        raise TorchslimError(f"datafree method '{method}': " + ("needs few_data, the real images the VAE learns from"
                             if method == "vae" else "takes no real images (few_data is for method 'vae' only)"))
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    t_start = time.perf_counter()
    info: dict = {"method": method, "config": cfg.model_dump(), "teacher_val_accuracy": accuracy_of(teacher, val)}

    # The inputs' source: a generator trained alongside the student (dafl), fresh noise each step (noise), or a
    # transfer set synthesised once, before the student's first step (deepinversion, vae).
    common = {"batch_size": train.batch_size, "input_shape": input_shape, "num_classes": num_classes, "seed": seed}
    if method == "dafl":
        batches: DataFreeBatches = DAFLBatches(teacher, cfg, student=student, **common)
    elif method == "noise":
        batches = NoiseBatches(teacher, cfg, **common)
    elif method == "deepinversion":
        batches = TransferSetBatches(teacher, cfg, **common, synthesize=lambda gen: synthesize_deepinversion(
            teacher, cfg.deepinversion, input_shape, num_classes, gen, log, stage))
    else:
        batches = TransferSetBatches(teacher, cfg, **common, synthesize=lambda gen: synthesize_vae(
            few_data, cfg.vae, gen, log, stage))
    try:
        result = fit(student, batches, val, train, loss_fn=batches.loss, seed=seed, checkpoint=checkpoint,
                     stage=stage, log=log, ema_decay=cfg.ema_decay)
    finally:
        batches.close()

    info.update(batches.info())
    info.update(history=[_epoch_record(r) for r in result.history], best_epoch=result.best_epoch,
                best_val_accuracy=result.best_val_accuracy,
                kept="best" if train.keep == "best" and result.best_epoch is not None else "last",
                seconds=time.perf_counter() - t_start)
    if isinstance(batches, DAFLBatches):
        info["generator_params"] = sum(p.numel() for p in batches.generator.parameters())
    return info


def _epoch_record(fitted: dict) -> dict:
    """One of fit's epoch records as data-free runs report it: the batch source's numbers (generator losses, teacher
    confidence, KD loss, agreement with the teacher) at the top level, fit's own loss and accuracy (the same KD loss
    and agreement, averaged per sample) left out."""
    record = {"epoch": fitted["epoch"], **fitted.get("terms", {}), "val_accuracy": fitted["val_accuracy"],
              "lr": fitted["lr"], "seconds": fitted["seconds"]}
    if "val_accuracy_raw" in fitted:  # with ema_decay: val_accuracy is the average's
        record["val_accuracy_raw"] = fitted["val_accuracy_raw"]
    return record
