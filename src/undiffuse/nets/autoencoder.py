"""The KL-regularised convolutional autoencoder of latent diffusion (Rombach et al. 2022, §3 and App. G).

An encoder E maps an image x (B, C, H, W) in [-1, 1] to a diagonal Gaussian q(z | x) = N(μ, diag σ²) over
a latent (B, c, H/f, W/f); a decoder D maps z back to an image. It is trained as a VAE (Kingma & Welling
2014) with a very weak KL term, so z stays close to deterministic and well-reconstructed while its scale is
kept bounded; a diffusion model then runs on z·s with s = :func:`measure_scale`. No discriminator (yet):
the L1 + multi-scale + image-gradient loss of :func:`reconstruction_loss` stands in for LPIPS + GAN.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import UndiffuseError
from .blocks import AttentionBlock, Downsample, Upsample


class PlainResBlock(nn.Module):
    """x ↦ skip(x) + conv₂(SiLU(GN(conv₁(SiLU(GN x))))): the ResBlock without a time embedding."""

    def __init__(self, in_ch: int, out_ch: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # (B, Cin, H, W) -> (B, Cout, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Autoencoder(nn.Module):
    """E: (B, in_channels, H, W) -> (μ, log σ²) each (B, latent_channels, H/f, W/f); D: z -> image.

    f = 2**(len(channel_mult)-1): (1, 2, 2) is LDM's KL-f4, (1, 2, 2, 4) KL-f8 (App. G, Tab. 8), there
    with channels=128 and num_res_blocks=2. ``attention`` adds one self-attention block to each mid-block.
    """

    def __init__(self, in_channels: int = 3, latent_channels: int = 4, channels: int = 64,
                 channel_mult: tuple[int, ...] = (1, 2, 2), num_res_blocks: int = 1, groups: int = 32,
                 attention: bool = False):
        super().__init__()
        widths = [channels * m for m in channel_mult]
        if min(in_channels, latent_channels, channels, num_res_blocks, groups, len(widths), *channel_mult) < 1:
            raise UndiffuseError("in/latent channels, channels, channel_mult, num_res_blocks and groups "
                                 "must be positive")
        if any(w % groups for w in widths):
            raise UndiffuseError(f"channel widths {widths} must all be divisible by the GroupNorm groups ({groups})")
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self._factor = 2 ** (len(widths) - 1)

        def mid(ch: int) -> nn.Sequential:
            attn = [AttentionBlock(ch, groups, ch)] if attention else []  # one head, as in LDM
            return nn.Sequential(PlainResBlock(ch, ch, groups), *attn, PlainResBlock(ch, ch, groups))

        enc: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        ch = channels
        for i, w in enumerate(widths):
            for _ in range(num_res_blocks):
                enc.append(PlainResBlock(ch, w, groups))
                ch = w
            if i < len(widths) - 1:
                enc.append(Downsample(ch, use_conv=True))                        # stride-2 3×3 conv
        enc += [mid(ch), nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(latent_channels, ch, 3, padding=1), mid(ch)]
        for i, w in reversed(list(enumerate(widths))):
            for _ in range(num_res_blocks + 1):
                dec.append(PlainResBlock(ch, w, groups))
                ch = w
            if i > 0:
                dec.append(Upsample(ch))                                         # nearest ×2, then 3×3 conv
        dec += [nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    @property
    def factor(self) -> int:
        """The down-sampling factor f: a latent is H/f × W/f."""
        return self._factor

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """(latent_channels, image_size/f, image_size/f) for square images of side ``image_size``."""
        if image_size < 1 or image_size % self.factor:
            raise UndiffuseError(f"image size {image_size} is not a positive multiple of the factor {self.factor}")
        return self.latent_channels, image_size // self.factor, image_size // self.factor

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:  # (B, C, H, W) -> 2 × (B, c, H/f, W/f)
        """The posterior's mean μ and log-variance log σ² (clamped to [-30, 20], as LDM does)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise UndiffuseError(f"this Autoencoder takes images (batch, {self.in_channels}, H, W), "
                                 f"got {tuple(x.shape)}")
        if x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise UndiffuseError(f"image size {tuple(x.shape[2:])} is not divisible by the factor {self.factor}")
        mean, logvar = self.encoder(x).to(x.dtype).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:  # (B, c, h, w) -> (B, C, h·f, w·f)
        if z.ndim != 4 or z.shape[1] != self.latent_channels:
            raise UndiffuseError(f"this Autoencoder decodes latents (batch, {self.latent_channels}, h, w), "
                                 f"got {tuple(z.shape)}")
        return self.decoder(z).to(z.dtype)

    def forward(self, x: Tensor, generator: torch.Generator | None = None,
                sample: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """(D(z), μ, log σ²) with z = μ + σ·ε (the reparameterisation trick), or z = μ when not ``sample``."""
        mean, logvar = self.encode(x)                                            # (B, c, h, w) each
        z = mean
        if sample:
            device = generator.device if generator is not None else mean.device  # a CPU generator may drive a GPU run
            eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=device).to(mean.device)
            z = mean + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mean, logvar


def image_gradients(x: Tensor) -> tuple[Tensor, Tensor]:  # (B, C, H, W) -> (B, C, H, W-1), (B, C, H-1, W)
    """Forward differences along x and along y."""
    return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]


def reconstruction_loss(recon: Tensor, x: Tensor, multiscale_weight: float = 0.5,
                        edge_weight: float = 0.5) -> Tensor:
    """L1 + multi-scale L1 (2×, 4× average-pooled) + L1 between image gradients; each a per-pixel mean.

    The gradient term is the edge term: a blurred edge spreads one large finite difference over several
    small ones, which plain L1 barely notices but an L1 on differences does (a cheap, local stand-in for
    LDM's LPIPS; an FFT magnitude would not say where the blur is). The pooled terms weigh colour and
    layout errors that are spread thinly over many pixels. Weights 0.5: both terms are the same order as
    the pixel L1 (the gradient L1 up to 2×), so they shape the loss without swamping the pixel fit.
    """
    l1 = (recon - x).abs().mean()
    pooled = [F.l1_loss(F.avg_pool2d(recon, k), F.avg_pool2d(x, k)) for k in (2, 4) if min(x.shape[-2:]) >= k]
    multiscale = torch.stack(pooled).mean() if pooled else torch.zeros_like(l1)
    (rx, ry), (tx, ty) = image_gradients(recon), image_gradients(x)
    edge = 0.5 * (F.l1_loss(rx, tx) + F.l1_loss(ry, ty))
    return l1 + multiscale_weight * multiscale + edge_weight * edge


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ (μ² + σ² - 1 - log σ²), summed over latent dims, averaged over the batch."""
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)                       # (B, c, h, w)
    return kl.flatten(1).sum(1).mean()


def autoencoder_loss(model: Autoencoder, x: Tensor, kl_weight: float = 1e-6, generator: torch.Generator | None = None,
                     multiscale_weight: float = 0.5, edge_weight: float = 0.5) -> tuple[Tensor, dict[str, float]]:
    """rec(D(z), x) + kl_weight·KL for one batch, and the stats {"rec", "kl", "l1"} as floats.

    kl_weight 1e-6 is LDM's (App. G): the KL only keeps the latents' scale in check, it must not cost
    reconstruction. Our rec is a per-pixel mean where LDM sums over pixels, so at equal weight our KL
    is C·H·W times stronger relative to the fit; at 1e-6 it is still a small fraction of the loss.
    """
    recon, mean, logvar = model(x, generator=generator)
    rec = reconstruction_loss(recon, x, multiscale_weight, edge_weight)
    kl = kl_divergence(mean.float(), logvar.float())
    stats = {"rec": rec.item(), "kl": kl.item(), "l1": (recon - x).abs().mean().item()}
    return rec + kl_weight * kl, stats


def psnr(a: Tensor, b: Tensor) -> Tensor:  # 2 × (B, C, H, W) in [-1, 1] -> (B,) in dB
    """Peak signal-to-noise ratio per image on the [0, 1] scale: 10·log10(1/MSE), the MSE floored at 1e-10
    so identical images give 100 dB, not infinity."""
    mse = ((a.float() - b.float()) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1.0 / mse)


@torch.no_grad()
def measure_scale(model: Autoencoder, images: Tensor, batch_size: int = 64) -> float:
    """1/std of the latent means μ of ``images`` (B, C, H, W): the factor s that makes z·s unit-variance.

    Stable Diffusion's 0.18215 is this number measured on its KL-f8 autoencoder: latent diffusion rescales
    the latent by its component-wise standard deviation before training on it (Rombach et al. 2022, §4.3.2).
    """
    means = [model.encode(images[i:i + batch_size])[0].double() for i in range(0, len(images), batch_size)]
    return 1.0 / torch.cat(means).std().item()
