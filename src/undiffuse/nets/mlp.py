"""A residual MLP backbone for vectors: 2-D toy points, tabular rows."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import UndiffuseError
from .layers import LabelEmbedding
from .layers import noise_embedding as noise_embedding_layer


class ResidualBlock(nn.Module):
    """h + W₂ SiLU(W₁ SiLU(LN h) + W_e e): a pre-norm residual block, the embedding e added inside."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.emb = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:  # (B, W), (B, W) -> (B, W)
        r = self.fc1(F.silu(self.norm(h))) + self.emb(emb)
        return h + self.fc2(F.silu(r))


class MLP(nn.Module):
    """F(x_in, noise_cond, cond) for inputs of shape (B, dim), with an optional class label.

    ``noise_embedding``: "positional" for a discrete step t ∈ [0, T) (VPDenoiser with a schedule),
    "fourier" for a continuous c_noise such as ¼ ln σ (EDMDenoiser, VPDenoiser without one).
    With ``num_classes`` the label (B,) is embedded; -1 (or ``cond=None``) means "no class",
    the null label that classifier-free guidance trains on.
    """

    def __init__(self, dim: int = 2, width: int = 256, depth: int = 4, emb_dim: int = 128,
                 noise_embedding: Literal["positional", "fourier"] = "fourier", num_classes: int = 0):
        super().__init__()
        self.noise_embed = noise_embedding_layer(noise_embedding, emb_dim)
        self.dim, self.num_classes = dim, num_classes
        self.emb_mlp = nn.Sequential(nn.Linear(emb_dim, width), nn.SiLU(), nn.Linear(width, width))
        self.class_embed = LabelEmbedding(num_classes, width) if num_classes else None
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
        self.out_norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, dim)
        # Start as the zero function: the wrapper's skip path alone (as EDM and DiT initialise).
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, noise_cond: Tensor, cond: Tensor | None = None) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise UndiffuseError(f"this MLP takes inputs of shape (batch, {self.dim}), got {tuple(x.shape)}")
        emb = self.emb_mlp(self.noise_embed(noise_cond.reshape(-1).expand(len(x))))  # (B, W)
        if self.class_embed is not None:
            emb = emb + self.class_embed(cond, len(x))
        elif cond is not None:
            raise UndiffuseError("this MLP is unconditional (num_classes=0) but got a class label")
        emb = F.silu(emb)
        h = self.inp(x.float())                                                  # (B, W)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h))).to(x.dtype)                    # (B, dim)
