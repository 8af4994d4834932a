"""A model's card, as `undiffuse info MODEL` prints it: what it is, how to sample it, and where it comes from.

Read from the safetensors header alone (the tensors are never loaded, so a large model answers at once): the
config, the class names or text encoder, the parameter count from the tensors' shapes, and the provenance the
trainer writes into every checkpoint (:meth:`undiffuse.train.Trainer.provenance`), or a shipped model's
``training`` record.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import samplers
from .checkpoint import PROVENANCE_PREFIX, read_header
from .config import Config, config_from_json
from .errors import UndiffuseError
from .model_files import resolve_model_path
from .sampling import describe_guidance


def model_card(model: str | Path) -> list[tuple[str, str]]:
    """(label, text) rows describing a run folder, checkpoint or model file, or shipped model."""
    import json

    try:
        path = resolve_model_path(model)
    except UndiffuseError:
        if not Path(model).is_dir():
            raise
        return _loaded_card(model)  # a folder of another format that load_model reads (a diffusers pipeline)
    meta, header, shapes = read_header(path)
    side = path.parent / "config.json"
    beside = json.loads(side.read_text()) if side.is_file() else {}
    if isinstance(beside, dict) and "config" in beside:  # a shipped model keeps its card (and training record) there
        meta = {**beside, **meta}
    if "config" not in meta:
        raise UndiffuseError(f"{path} has no config in its metadata and no config.json beside it")
    cfg = config_from_json(json.dumps(meta["config"]))
    prefix = "ema." if any(k.startswith("ema.") for k in shapes) else "model."
    n_params = sum(math.prod(shape) for k, shape in shapes.items() if k.startswith(prefix))
    rows = [("model", f"{cfg.name}  ({path})"),
            ("space", _space(cfg, meta)),
            ("backbone", _backbone(cfg)),
            ("parameterisation", _parameterisation(cfg)),
            ("parameters", f"{n_params:,} ({'EMA weights' if prefix == 'ema.' else 'weights'})"),
            ("conditioning", _conditioning(cfg, meta))]
    if cfg.model.backbone != "autoencoder":
        rows.append(("sampling", _sampling(cfg)))
    if "optim" in {k.split(".", 1)[0] for k in shapes}:
        rows.append(("checkpoint", f"resumable training state at step {meta.get('step', '?')} (weights, EMA, "
                                   "optimizer, RNG)"))
    rows += _provenance(meta, header)
    return rows


def _loaded_card(model: str | Path) -> list[tuple[str, str]]:
    """The card of a model that only :func:`~undiffuse.models.load_model` reads (it is loaded to count its weights)."""
    from .models import load_model

    loaded = load_model(model)
    cfg, meta = loaded.config, loaded.meta
    n_params = sum(p.numel() for p in loaded.denoiser.parameters())
    return [("model", f"{cfg.name}  ({model})"), ("space", _space(cfg, meta)), ("backbone", _backbone(cfg)),
            ("parameterisation", _parameterisation(cfg)), ("parameters", f"{n_params:,}"),
            ("conditioning", _conditioning(cfg, {**meta, "class_names": loaded.class_names})),
            ("sampling", _sampling(cfg)), *_provenance(meta, {})]


def _space(cfg: Config, meta: dict[str, Any]) -> str:
    d, s = cfg.data, cfg.space
    if meta.get("dim"):
        return f"{meta['dim']}-D points ({'toy set ' + d.toy_set if d.name == 'toy' else d.name})"
    if s.kind == "spectrogram":
        return (f"spectrogram: log-mel 1×{s.n_mels}×{s.length // s.hop} of {s.length / s.rate:.2f} s clips at "
                f"{s.rate} Hz (n_fft {s.n_fft}, hop {s.hop})")
    image = f"{d.channels}×{d.image_size}×{d.image_size}"
    if s.kind == "latent":
        ae = meta.get("autoencoder") or {}
        ae_model = (ae.get("config") or {}).get("model", {})
        shape = ""
        if ae_model.get("channel_mult"):
            side = d.image_size // 2 ** (len(ae_model["channel_mult"]) - 1)
            shape = f"{ae_model.get('latent_channels', '?')}×{side}×{side} "
        scale = f", scale {ae['scale']:.4g}" if isinstance(ae.get("scale"), int | float) else ""
        return f"latent {shape}of {image} images (autoencoder {ae.get('source') or s.autoencoder}{scale})"
    if d.frames:
        return f"video: {d.frames} frames of {image}"
    return f"pixels {image}"


def _backbone(cfg: Config) -> str:
    m = cfg.model
    if m.backbone == "mlp":
        return f"mlp: width {m.channels}, {m.mlp_depth} residual blocks"
    if m.backbone == "dit":
        return f"dit: DiT-{m.dit_size}/{m.patch_size}, text attention {m.text_attention}"
    attention = ", ".join(str(r) for r in m.attention_resolutions) or "none"
    kind = "space-time u-net" if cfg.data.frames else m.backbone
    extra = f", temporal {m.temporal}" if cfg.data.frames else ""
    return (f"{kind}: {m.channels} channels × {list(m.channel_mult)}, {m.num_res_blocks} res blocks per level, "
            f"attention at {attention}{extra}")


def _parameterisation(cfg: Config) -> str:
    d = cfg.diffusion
    if cfg.model.backbone == "autoencoder":
        return f"autoencoder (KL weight {cfg.train.kl_weight:g}), not a diffusion model"
    if d.parameterization == "edm":
        return f"edm (Karras et al. 2022), σ_data {d.sigma_data:g}"
    if d.parameterization == "flow":
        return f"flow (rectified flow velocity), shift {d.flow_shift:g}"
    name = {"eps": "ε-prediction", "x0": "x0-prediction", "v": "v-prediction"}[d.parameterization]
    chain = "given betas" if getattr(d, "betas", None) else f"the {d.schedule} chain"
    snr = f", min-SNR-γ {d.min_snr_gamma:g}" if d.min_snr_gamma else ""
    return f"{d.parameterization} ({name}) on {chain}, T = {d.timesteps}{snr}"


def _conditioning(cfg: Config, meta: dict[str, Any]) -> str:
    classes = list(meta.get("class_names") or [])
    if meta.get("context_dim"):
        return f"text: prompts of up to {cfg.data.text_length} tokens (a {meta['context_dim']}-wide frozen encoder)"
    if classes:
        shown = ", ".join(classes[:12]) + (f", … ({len(classes) - 12} more)" if len(classes) > 12 else "")
        return f"{len(classes)} classes: {shown}"
    return "none (unconditional)"


def _sampling(cfg: Config) -> str:
    s = cfg.sample
    webui = samplers.webui_name(s.sampler)
    grid = samplers.WEBUI_GRIDS.get(s.grid)
    known = f"; as the web UIs name it: {webui}{' ' + grid if grid else ''}" if webui != s.sampler else ""
    guidance = describe_guidance(s.guidance, tuple(s.guidance_interval) if s.guidance_interval else None)
    scaled = f", ε̂ / {s.eps_scale:g} for σ ≤ 80" if s.eps_scale != 1 else ""
    projected = f", the update's part along x̂0 × {s.guidance_parallel:g} (APG)" if s.guidance_parallel != 1 else ""
    return f"{s.sampler}, {s.steps} steps, {s.grid} grid, {guidance}{projected}{scaled}{known}"


def _provenance(meta: dict[str, Any], header: dict[str, str]) -> list[tuple[str, str]]:
    """The trainer's provenance (JSON, or the plain header keys where only they are left), or a shipped model's
    training record."""
    prov = meta.get("provenance") or {k[len(PROVENANCE_PREFIX):]: v for k, v in header.items()
                                      if k.startswith(PROVENANCE_PREFIX)}
    rows = []
    if prov:
        data = f"{prov.get('data', '?')} ({int(prov['data_size']):,} items)" if "data_size" in prov \
            else str(prov.get("data", "?"))
        seconds = f", {meta['seconds']:.0f} s" if isinstance(meta.get("seconds"), int | float) else ""
        versions = f"undiffuse {prov.get('undiffuse_version', '?')}, torch {prov.get('torch_version', '?')}"
        rows += [("recipe hash", str(prov.get("recipe_hash", "?"))), ("data", data),
                 ("trained", f"{int(prov.get('steps', 0)):,} steps{seconds}"), ("versions", versions)]
    training = meta.get("training")
    if isinstance(training, dict):  # a shipped model's record of how it was made
        for key in ("command", "steps", "seconds", "hardware", "torch", "date", "data"):
            if key in training:
                value = training[key]
                rows.append((f"training {key}", f"{value:.0f}" if isinstance(value, float) else str(value)))
    if not rows:
        rows.append(("provenance", "none recorded (written before undiffuse recorded it)"))
    return rows
