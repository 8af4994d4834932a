"""diffusers folders in: a ``save_pretrained`` pipeline (``model_index.json`` with ``unet/`` and ``scheduler/``, e.g.
DDPMPipeline, DDIMPipeline) or a bare ``UNet2DModel`` folder with its scheduler config, as an undiffuse model.

The adapter is k-diffusion's ``external.py`` in our terms: the scheduler config gives the β chain, hence
σ_t = √((1-ᾱ_t)/ᾱ_t); :class:`~undiffuse.denoiser.VPDenoiser` calls the network on the DDPM sample
x_t = x/√(1+σ²) at the (fractional) timestep t(σ) and converts its ``prediction_type`` (epsilon, sample,
v_prediction) to x̂0 once; ``clip_sample`` clamps x̂0 to ±``clip_sample_range``. Images are in [-1, 1] on both sides.

Weights are read from safetensors only: a pickle (``.bin``, ``.ckpt`` …) can run code when it is loaded, so it is
refused without being opened. Every refusal is one :class:`~undiffuse.errors.UndiffuseError` line naming the file
and key.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import Config, from_dict
from ..denoiser import VPDenoiser
from ..errors import UndiffuseError
from ..models import LoadedModel
from ..process import DiscreteSchedule, betas_cosine
from . import import_diffusers

WEIGHTS = "diffusion_pytorch_model"
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
SIDECAR = "undiffuse.json"  # optional, written by `undiffuse export`: class names, the null label, data and sample
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
OUR_SCHEDULE = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
# Schedulers of a discrete VP chain (β_t, ᾱ_t, timestep t): the model is the same whichever of them it was saved
# with, since our samplers replace the scheduler. Continuous or VE ones (ScoreSdeVe, FlowMatch…, EDM…) are not.
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "DPMSolverMultistepScheduler",
              "DPMSolverSinglestepScheduler", "DPMSolverSDEScheduler", "EulerDiscreteScheduler",
              "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
              "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "UniPCMultistepScheduler",
              "DEISMultistepScheduler", "DDIMInverseScheduler", "DDPMParallelScheduler", "DDIMParallelScheduler",
              "TCDScheduler", "LCMScheduler", "SASolverScheduler")


# --------------------------------------------------------------------------- finding the folder's parts
def is_diffusers_folder(model: str | Path) -> bool:
    """Whether ``model`` is a folder diffusers' ``save_pretrained`` wrote: a pipeline (``model_index.json``) or a
    ``UNet2DModel`` (a ``config.json`` naming that class). Cheap: reads one small JSON file, imports nothing."""
    p = Path(model)
    if not p.is_dir():
        return False
    if (p / "model_index.json").is_file():
        return True
    try:
        return json.loads((p / "config.json").read_text()).get("_class_name") == "UNet2DModel"
    except (OSError, ValueError, AttributeError):
        return False


def _read_json(path: Path, what: str = "") -> dict[str, Any]:
    """A JSON object from ``path``, or a one-line error."""
    if not path.is_file():
        raise UndiffuseError(f"{path} is missing{what}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UndiffuseError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise UndiffuseError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def folder_parts(folder: Path) -> tuple[Path, Path, Path]:
    """(folder holding the pipeline's files, the UNet's folder, its scheduler config) of a pipeline or bare UNet."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():  # a bare UNet2DModel: the scheduler config beside it, or in ../scheduler/
        beside = folder / "scheduler_config.json"
        if beside.is_file():
            return folder, folder, beside
        sibling = folder.parent / "scheduler" / "scheduler_config.json"  # PIPELINE/unet given: PIPELINE's parts
        if sibling.is_file():
            return folder.parent, folder, sibling
        raise UndiffuseError(f"{folder} is a UNet2DModel without a scheduler config: put the scheduler_config.json "
                             "it was trained with beside its config.json (or save the whole pipeline)")
    index = _read_json(index_path)
    components = {k: v for k, v in index.items() if not k.startswith("_") and v is not None}
    for key, value in components.items():
        ok = isinstance(value, list) and len(value) == 2 and all(isinstance(v, str | None) for v in value)
        if not ok:
            raise UndiffuseError(f"{index_path}: component {key!r} must be [library, class], got {value!r}")
    unet = components.get("unet", [None, None])[1]
    if unet != "UNet2DModel":
        raise UndiffuseError(f"{index_path}: 'unet' is {unet!r}; undiffuse loads pixel-space pipelines whose unet is a "
                             "UNet2DModel (DDPMPipeline, DDIMPipeline, …)")
    if "scheduler" not in components:
        raise UndiffuseError(f"{index_path} names no 'scheduler'")
    extra = sorted(set(components) - {"unet", "scheduler"})
    if extra:
        raise UndiffuseError(f"{index_path}: component {extra[0]!r} ({components[extra[0]][1]}) is not supported: "
                             "undiffuse loads a UNet2DModel and its scheduler only (no VAE, text encoder, …)")
    return folder, folder / "unet", folder / "scheduler" / "scheduler_config.json"


# --------------------------------------------------------------------------- the configs
def check_unet_config(cfg: dict[str, Any], where: Path) -> tuple[int, int, int]:
    """(channels, image size, number of class embeddings) of a UNet2DModel config whose interface we can drive,
    or a one-line refusal naming the key."""
    def refuse(key: str, why: str) -> UndiffuseError:
        return UndiffuseError(f"{where}: {key} = {json.dumps(cfg.get(key))} is not supported: {why}")

    if cfg.get("_class_name") != "UNet2DModel":
        raise refuse("_class_name", "undiffuse loads a UNet2DModel")
    if cfg.get("time_embedding_type", "positional") != "positional":
        raise refuse("time_embedding_type", "only 'positional' embeddings of the discrete timestep t are driven "
                     "(fourier ones are continuous-σ score models, learned ones take integer t only)")
    if cfg.get("class_embed_type") is not None:
        raise refuse("class_embed_type", "only a table of class embeddings (num_class_embeds) is supported")
    classes = cfg.get("num_class_embeds")
    if classes is not None and (not isinstance(classes, int) or isinstance(classes, bool) or classes < 1):
        raise refuse("num_class_embeds", "must be a positive integer or null")
    channels, out = cfg.get("in_channels", 3), cfg.get("out_channels", 3)
    if channels not in (1, 3):
        raise refuse("in_channels", "undiffuse runs pixel models of 1 or 3 channels (a latent UNet needs its VAE)")
    if out != channels:
        raise refuse("out_channels", f"must equal in_channels ({channels}): a learned variance (2× channels) is not "
                     "supported")
    size = cfg.get("sample_size")
    if isinstance(size, list | tuple) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 4096:
        raise refuse("sample_size", "undiffuse needs a square image size, one integer")
    return channels, size, classes or 0


def _positive(cfg: dict[str, Any], key: str, default: Any, where: Path) -> float:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise UndiffuseError(f"{where}: {key} must be a positive number, got {json.dumps(value)}")
    return value


def scheduler_betas(cfg: dict[str, Any], where: Path) -> tuple[Tensor, str]:
    """β_0 … β_{T-1} of a scheduler config, exactly as diffusers builds them (float32), and the name of our
    schedule that is the same chain ("trained" where none is)."""
    T = cfg.get("num_train_timesteps", 1000)
    if not isinstance(T, int) or isinstance(T, bool) or not 2 <= T <= 100_000:
        raise UndiffuseError(f"{where}: num_train_timesteps must be an integer in [2, 100000], got {json.dumps(T)}")
    trained = cfg.get("trained_betas")
    if trained is not None:
        if not isinstance(trained, list) or len(trained) != T or not all(
                isinstance(b, int | float) and not isinstance(b, bool) and 0 < b < 1 for b in trained):
            raise UndiffuseError(f"{where}: trained_betas must be num_train_timesteps ({T}) numbers in (0, 1)")
        return torch.tensor(trained, dtype=torch.float32), "trained"
    name = cfg.get("beta_schedule", "linear")
    if name not in BETA_SCHEDULES:
        raise UndiffuseError(f"{where}: beta_schedule = {json.dumps(name)} is not supported; known: "
                             f"{', '.join(BETA_SCHEDULES)} (or trained_betas)")
    if name == "squaredcos_cap_v2":  # diffusers' betas_for_alpha_bar: Nichol & Dhariwal's cosine, β ≤ 0.999
        return betas_cosine(T).to(torch.float32), "cosine"
    lo, hi = _positive(cfg, "beta_start", 1e-4, where), _positive(cfg, "beta_end", 0.02, where)
    if name == "linear":
        betas = torch.linspace(lo, hi, T, dtype=torch.float32)
    elif name == "scaled_linear":
        betas = torch.linspace(lo**0.5, hi**0.5, T, dtype=torch.float32) ** 2
    else:  # sigmoid (DDPMScheduler's)
        betas = torch.sigmoid(torch.linspace(-6, 6, T)) * (hi - lo) + lo
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise UndiffuseError(f"{where}: beta_start = {lo}, beta_end = {hi} give β outside (0, 1)")
    defaults = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}
    ours = OUR_SCHEDULE.get(name) if defaults.get(name) == (lo, hi) else None
    return betas, ours or "trained"


def scheduler_process(cfg: dict[str, Any], where: Path) -> tuple[Tensor, str, str, float | None]:
    """(β as diffusers builds them, our schedule's name, our prediction type, the x̂0 clip range or None) of a
    scheduler config; refuses what changes the model (not just the sampler) and that we do not implement."""
    name = cfg.get("_class_name")
    if name not in SCHEDULERS:
        raise UndiffuseError(f"{where}: _class_name = {json.dumps(name)} is not supported: undiffuse loads the "
                             f"schedulers of a discrete VP chain ({', '.join(SCHEDULERS[:4])}, …)")
    prediction = cfg.get("prediction_type", "epsilon")
    if not isinstance(prediction, str) or prediction not in PREDICTIONS:
        raise UndiffuseError(f"{where}: prediction_type = {json.dumps(prediction)} is not supported; known: "
                             f"{', '.join(PREDICTIONS)}")
    for key, why in (("rescale_betas_zero_snr", "a zero terminal SNR puts the last step at σ = ∞, which has no "
                      "σ-form"), ("thresholding", "dynamic thresholding of x̂0 is not implemented; clip_sample is")):
        if cfg.get(key):
            raise UndiffuseError(f"{where}: {key} = {json.dumps(cfg[key])} is not supported: {why}")
    variance = cfg.get("variance_type") or "fixed_small"
    if not isinstance(variance, str) or variance.startswith("learned"):
        raise UndiffuseError(f"{where}: variance_type = {json.dumps(variance)} is not supported: a learned variance "
                             "is not used (fixed_small, fixed_large: our samplers choose their own)")
    betas, schedule = scheduler_betas(cfg, where)
    clip = None
    if cfg.get("clip_sample", False):
        clip = float(_positive(cfg, "clip_sample_range", 1.0, where))
    return betas, schedule, PREDICTIONS[prediction], clip


def read_sidecar(folder: Path, classes: int) -> tuple[list[str], int | None, dict[str, Any]]:
    """(class names, the embedding index meaning "no class" or None, config sections) of the folder's optional
    ``undiffuse.json``; without one, classes are named "0" … "K-1" and there is no null label."""
    names, null, sections = [str(i) for i in range(classes)], None, {}
    path = folder / SIDECAR
    if not path.is_file():
        return names, null, sections
    side = _read_json(path)
    unknown = sorted(set(side) - {"class_names", "null_label", "config", "source", "undiffuse_version"})
    if unknown:
        raise UndiffuseError(f"{path}: unknown key {unknown[0]!r}")
    if side.get("null_label") is not None:
        null = side["null_label"]
        if null != classes - 1 or classes < 2:
            raise UndiffuseError(f"{path}: null_label must be the last class embedding ({classes - 1}), got {null!r}")
        names = names[:-1]
    if "class_names" in side:
        given = side["class_names"]
        if not isinstance(given, list) or len(given) != len(names) or not all(isinstance(n, str) for n in given):
            raise UndiffuseError(f"{path}: class_names must be {len(names)} strings")
        names = given
    sections = side.get("config", {})
    if not isinstance(sections, dict) or set(sections) - {"name", "data", "sample"}:
        raise UndiffuseError(f"{path}: config may hold name, data and sample only")
    return names, null, sections


# --------------------------------------------------------------------------- the weights
def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def _weight_files(unet_dir: Path) -> list[Path]:
    """The UNet's safetensors file(s): plain, sharded (an index), or a single variant such as fp16. A pickle is
    refused by name, never opened."""
    plain = unet_dir / f"{WEIGHTS}.safetensors"
    if plain.is_file():
        return [plain]
    index = unet_dir / f"{WEIGHTS}.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UndiffuseError(f"{index}: weight_map must map tensor names to shard files")
        for s in weight_map.values():  # shard names are plain file names beside the index
            if not isinstance(s, str) or Path(s).name != s or not s.endswith(".safetensors"):
                raise UndiffuseError(f"{index}: shard {s!r} is not a .safetensors file beside the index")
        return [unet_dir / s for s in sorted(set(weight_map.values()))]
    variants = sorted(unet_dir.glob(f"{WEIGHTS}.*.safetensors"))
    if len(variants) == 1:
        return variants
    if len(variants) > 1:
        raise UndiffuseError(f"{unet_dir} holds {len(variants)} variants of the weights "
                             f"({', '.join(v.name for v in variants)}): keep one")
    pickles = sorted(p.name for p in unet_dir.glob("*") if p.suffix in PICKLE_SUFFIXES) if unet_dir.is_dir() else []
    if pickles:
        raise UndiffuseError(f"{unet_dir / pickles[0]} is a pickle, which can run code when loaded: undiffuse reads "
                             f"safetensors only (re-save a model you trust with save_pretrained(..., "
                             f"safe_serialization=True))")
    raise UndiffuseError(f"{unet_dir} holds no {WEIGHTS}.safetensors")


def read_weights(unet_dir: Path) -> dict[str, Tensor]:
    """The UNet's tensors in float32, legacy attention names (query/key/value/proj_attn) renamed as diffusers does."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors: dict[str, Tensor] = {}
    for f in _weight_files(unet_dir):
        if not f.is_file():
            raise UndiffuseError(f"{f} is missing")
        try:
            part = load_file(f)
        except (SafetensorError, OSError, ValueError) as err:
            raise UndiffuseError(f"{f} is not a readable safetensors file: {_first_line(err)}") from None
        tensors.update(part)
    legacy = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
    out = {}
    for key, t in tensors.items():
        if not t.is_floating_point():
            raise UndiffuseError(f"{unet_dir}: tensor {key!r} has dtype {t.dtype}, not a floating-point weight")
        for old, new in legacy.items():
            key = key.replace(old, new) if ".attentions." in key else key
        out[key] = t.to(torch.float32)
    return out


def build_unet(config: dict[str, Any], tensors: dict[str, Tensor], where: Path) -> nn.Module:
    """A diffusers UNet2DModel of ``config`` holding ``tensors``: built on the meta device first, so a config that
    does not fit its weights is refused (naming the first missing, unexpected or misshapen tensor) before the
    network is allocated."""
    diffusers = import_diffusers(f"loading the diffusers model {where.parent}")
    try:
        with torch.device("meta"):
            unet = diffusers.UNet2DModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    except Exception as err:  # noqa: BLE001 (diffusers raises anything on a bad config: one line, naming it)
        raise UndiffuseError(f"{where}: diffusers cannot build a UNet2DModel from it "
                             f"({type(err).__name__}: {_first_line(err)})") from None
    expected = unet.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        which = f"{len(missing)} missing (first: {missing[0]})" if missing else ""
        extra = f"{len(unexpected)} unexpected (first: {unexpected[0]})" if unexpected else ""
        raise UndiffuseError(f"{where.parent}: the weights do not fit config.json: "
                             f"{', '.join(w for w in (which, extra) if w)}")
    for key, t in expected.items():
        if tuple(tensors[key].shape) != tuple(t.shape):
            raise UndiffuseError(f"{where.parent}: tensor {key!r} has shape {tuple(tensors[key].shape)}, config.json "
                                 f"needs {tuple(t.shape)}")
    unet.load_state_dict(tensors, strict=True, assign=True)
    if any(t.is_meta for t in (*unet.parameters(), *unet.buffers())):  # pragma: no cover (a diffusers change)
        raise UndiffuseError(f"{where.parent}: the UNet2DModel has state its weights file does not hold")
    return unet.eval().requires_grad_(False)


# --------------------------------------------------------------------------- the model
class DiffusersUNet(nn.Module):
    """F(x_in, t, cond) over a diffusers UNet2DModel: its ``.sample`` at the (fractional) timestep t.

    A class-conditional one (``num_class_embeds`` K) takes labels 0 … ``num_classes``-1; ``null_label`` is the
    embedding meaning "no class" (label -1 or ``num_classes``: an undiffuse export's last one), None where it has
    none, and then an unconditional call is refused.
    """

    def __init__(self, unet: nn.Module, num_classes: int = 0, null_label: int | None = None, source: str = ""):
        super().__init__()
        self.unet, self.num_classes, self.null_label, self.source = unet, num_classes, null_label, source

    def labels(self, cond: Any, batch: int) -> Tensor | None:
        """The class labels diffusers gets for ``cond`` (None for an unconditional model)."""
        if not self.num_classes and self.null_label is None:
            if cond is not None:
                raise UndiffuseError(f"{self.source} is unconditional (no num_class_embeds) but got a class label")
            return None
        if cond is None:
            cond = torch.full((batch,), -1, dtype=torch.long)
        if not isinstance(cond, Tensor) or cond.shape != (batch,):
            raise UndiffuseError(f"{self.source} takes class labels of shape ({batch},)")
        cond = cond.long()
        null = (cond == -1) | (cond == self.num_classes)
        if bool(((cond < -1) | (cond > self.num_classes)).any()):
            raise UndiffuseError(f"class labels of {self.source} must be in [0, {self.num_classes - 1}]")
        if bool(null.any()):
            if self.null_label is None:
                raise UndiffuseError(f"{self.source} has no 'no class' embedding (its labels are 0-"
                                     f"{self.num_classes - 1}): give it a class (--class) and guidance 1")
            cond = torch.where(null, self.null_label, cond)
        return cond

    def forward(self, x: Tensor, noise_cond: Tensor, cond: Any = None) -> Tensor:
        labels = self.labels(cond, len(x))
        t = noise_cond.reshape(-1).expand(len(x)).to(x.device)
        return self.unet(x, t, class_labels=None if labels is None else labels.to(x.device)).sample


class ClippedVPDenoiser(VPDenoiser):
    """:class:`~undiffuse.denoiser.VPDenoiser` with x̂0 clamped to [-clip, clip] (diffusers' ``clip_sample``; None:
    not clamped). A subclass, not a wrapper, so that ``.net`` and ``.schedule`` stay where tools look for them."""

    def __init__(self, net: nn.Module, prediction: str, schedule: DiscreteSchedule, clip: float | None = None):
        super().__init__(net, prediction, schedule)  # type: ignore[arg-type]
        self.clip = clip

    def forward(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        x0 = super().forward(x, sigma, cond)
        return x0 if self.clip is None else x0.clamp(-self.clip, self.clip)


def load_diffusers(model: str | Path) -> LoadedModel:
    """A diffusers folder as a :class:`~undiffuse.models.LoadedModel`: the UNet2DModel wrapped in
    :class:`DiffusersUNet` and :class:`~undiffuse.denoiser.VPDenoiser` on the scheduler's chain, and a config
    describing it (pixels of the UNet's size and channels; data and sample settings from ``undiffuse.json``,
    where present; guidance 1 for a class model without a "no class" embedding)."""
    folder, unet_dir, sched_path = folder_parts(Path(model))
    unet_cfg_path = unet_dir / "config.json"
    unet_cfg = _read_json(unet_cfg_path, " (the UNet2DModel's config)")
    channels, size, embeds = check_unet_config(unet_cfg, unet_cfg_path)
    betas, schedule_name, prediction, clip = scheduler_process(_read_json(sched_path, " (the scheduler config)"),
                                                                sched_path)
    class_names, null, sections = read_sidecar(folder, embeds)
    schedule = DiscreteSchedule(betas.to(torch.float64))
    unet = build_unet(unet_cfg, read_weights(unet_dir), unet_cfg_path)
    net = DiffusersUNet(unet, len(class_names), null, str(model))
    denoiser = ClippedVPDenoiser(net, prediction, schedule=schedule, clip=clip)  # type: ignore[arg-type]
    cfg = from_dict(Config, _config_dict(folder, unet_cfg, channels, size, class_names, null, betas,
                                                 schedule_name, prediction, sections)).validate()
    meta = {"class_names": class_names, "unguided": bool(class_names) and null is None,  # no "no class" label
            "diffusers": {"folder": str(folder), "unet": str(unet_dir), "scheduler": str(sched_path),
                          "clip_sample": clip}}
    return LoadedModel(denoiser, cfg, class_names, str(model), meta)


def _config_dict(folder: Path, unet: dict[str, Any], channels: int, size: int, class_names: list[str],
                 null: int | None, betas: Tensor, schedule: str, prediction: str,
                 sections: dict[str, Any]) -> dict[str, Any]:
    """The undiffuse config of a diffusers model: what it runs on (pixels, size, channels, classes), its chain, and a
    description of its UNet (informational: the diffusers net is what runs)."""
    widths = [int(w) for w in unet.get("block_out_channels", [224, 448, 672, 896])]
    base = math.gcd(*widths) or 1
    down = unet.get("down_block_types", [])
    head_dim = unet.get("attention_head_dim") or widths[-1]
    data = {**sections.get("data", {}), "image_size": size, "channels": channels, "conditional": bool(class_names)}
    sample = {"guidance": 1.0 if class_names and null is None else 2.0, **sections.get("sample", {})}
    return {
        "name": sections.get("name", folder.name),
        "out_dir": str(folder),
        "data": data,
        "model": {"backbone": "unet", "channels": base, "channel_mult": [w // base for w in widths],
                  "num_res_blocks": int(unet.get("layers_per_block", 2)),
                  "attention_resolutions": [size // 2**i for i, b in enumerate(down) if "Attn" in str(b)],
                  "dropout": float(unet.get("dropout", 0.0)), "num_heads": max(1, widths[-1] // int(head_dim)),
                  "groups": int(unet.get("norm_num_groups") or 32)},
        "diffusion": {"parameterization": prediction, "schedule": schedule, "timesteps": len(betas),
                      "betas": betas.to(torch.float64).tolist()},
        "sample": sample,
    }
