"""Typed run configs: dataclasses loaded from TOML, overridable with ``key=value``, saved as JSON.

A recipe in ``configs/`` is a TOML file with one table per section ([data], [model], [diffusion],
[train], [sample]); every field has a default and a reason. Unknown keys, wrong types and
impossible values are refused before any work starts, naming the field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UndiffuseError


BACKBONES = ("unet", "dit", "mlp", "autoencoder")
SPACES = ("pixels", "latent", "spectrogram")
LOGGERS = ("jsonl", "tensorboard", "wandb")  # train.log: where training metrics go (JSONL always)
LR_SCHEDULES = ("constant", "linear")


CAPTIONED = ("emoji", "openmoji", "emoji+openmoji", "tuxpaint")  # data sets with captions (text models)
SOUND = ("spoken_digits", "audio_folder")  # data sets of clips (trained in a spectrogram space)
VIDEO = ("moving_sprites", "clip_folder")  # data sets of video clips (data.frames frames each)


@dataclass
class DataConfig:
    name: str = "fashion_mnist"      # fashion_mnist | folder | digits | toy | emoji | openmoji | emoji+openmoji |
    #                                  tuxpaint (these four captioned) | spoken_digits | audio_folder (sound) |
    #                                  moving_sprites | clip_folder (video)
    path: str = ""                   # image folder (name = "folder"), sound folder (name = "audio_folder") or clip
    #                                  folder (name = "clip_folder": GIF, MP4, WebM …; sub-folders are classes)
    toy_set: str = "two_moons"       # 2-D set (name = "toy"): two_moons, swiss_roll, eight_gaussians, checkerboard
    toy_size: int = 20_000           # points drawn for a toy set
    image_size: int = 32             # model resolution; images are resized / padded to it
    channels: int = 1                # 1 grayscale, 3 RGB
    flip: bool = False               # random horizontal flips (not for text or digits)
    conditional: bool = True         # train with class labels (or captions) when the data has them
    limit: int = 0                   # use only the first n images (0: all)
    text_length: int = 32            # tokens per caption for the text encoder (captioned data)
    frames: int = 0                  # > 0: video: clips of this many frames (moving_sprites, clip_folder)
    stride: int = 1                  # clip_folder: take every stride-th frame from a clip's first
    clips: int = 10_000              # moving_sprites: clips made (seeded by train.seed)
    recolour: int = 0                # captioned data: hue-rotated copies of each coloured image, captioned
    #                                  "a <colour> <name>" (data.recolour); every coloured image also gets that caption


@dataclass
class ModelConfig:
    backbone: str = "unet"                              # unet | dit | mlp | autoencoder (a latent space's codec)
    channels: int = 64                                  # base width of the U-Net / autoencoder (MLP: hidden width)
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])  # width per level
    num_res_blocks: int = 2                             # residual blocks per level
    attention_resolutions: list[int] = field(default_factory=lambda: [8])  # feature-map sizes with attention
    dropout: float = 0.1                                # ADM uses 0.1 on small data sets
    num_heads: int = 4                                  # attention heads
    groups: int = 32                                    # GroupNorm groups (must divide every width)
    mlp_depth: int = 4                                  # residual blocks of the MLP backbone
    dit_size: str = "S"                                 # DiT: a named depth × width × heads (nets.dit.DIT_SIZES)
    patch_size: int = 2                                 # DiT: pixels (or latent cells) per token side
    text_attention: str = "cross"                       # DiT text conditioning: cross (PixArt-α) | joint (SD3 MM-DiT)
    temporal: str = "attention"                         # video U-Net: attention | conv | both across frames
    latent_channels: int = 4                            # autoencoder: channels of its latent (LDM uses 3-4)


@dataclass
class SpaceConfig:
    kind: str = "pixels"             # where diffusion runs: pixels | latent (an autoencoder's scaled latents) |
    #                                  spectrogram (sound as a log-mel spectrogram: spaces.spectrogram)
    autoencoder: str = ""            # latent: the autoencoder's run folder, model file or shipped name
    rate: int = 8000                 # spectrogram: samples per second of the clips
    length: int = 8192               # spectrogram: samples per clip (frames = length / hop)
    n_fft: int = 512                 # spectrogram: STFT window and FFT size
    hop: int = 128                   # spectrogram: frame step
    n_mels: int = 64                 # spectrogram: mel bands (the height of x)


@dataclass
class DiffusionConfig:
    parameterization: str = "eps"    # eps | x0 | v (VP network), edm (EDM preconditioning) or flow (rectified flow)
    schedule: str = "cosine"         # β schedule: linear | cosine | scaled_linear (VP only)
    timesteps: int = 1000            # T of the discrete chain (VP only)
    betas: list[float] = field(default_factory=list)  # explicit β_0 … β_{T-1} (T = timesteps), overriding schedule:
    #                                  a chain no name gives (a diffusers model's trained or custom betas); []: off
    min_snr_gamma: float = 0.0       # > 0: min-SNR-γ loss weighting (Hang et al. 2023); 0: native loss
    sigma_data: float = 0.5          # EDM's σ_data (a latent space is scaled to unit variance: use 1.0 there)
    p_mean: float = -1.2             # EDM training density ln σ ~ N(p_mean, p_std²)
    p_std: float = 1.2
    flow_logit_mean: float = 0.0     # flow training density t = sigmoid(u), u ~ N(mean, std²) (SD3's logit-normal)
    flow_logit_std: float = 1.0
    flow_shift: float = 1.0          # flow: SD3's resolution shift t' = s t/(1 + (s-1) t), in training and sampling


@dataclass
class TrainConfig:
    steps: int = 20_000              # optimizer steps (0: no step budget; train.max_seconds then ends the run)
    init: str = ""                   # start from this model's weights (run folder, model file or shipped name) with
    #                                  a fresh optimizer: fine-tuning; its [model] section must equal this one
    max_seconds: float = 0.0         # stop (checkpoint and export) once this much training time is spent (0: off);
    #                                  for comparisons at equal wall time
    batch_size: int = 64             # images per optimizer step (split over grad_accum micro-batches)
    grad_accum: int = 1              # micro-batches per step (same result, less memory)
    lr: float = 2e-4                 # AdamW peak learning rate
    warmup: int = 500                # linear warm-up steps
    lr_schedule: str = "constant"    # after warm-up: constant (DDPM, ADM) | linear: down to lr_final × lr over the
    #                                  budget, the fraction of train.steps or of train.max_seconds spent, whichever
    #                                  is larger (the 2-D demo's: more steps per second beat a bigger batch)
    lr_final: float = 0.1            # linear: the rate at the end of the budget, as a fraction of lr
    weight_decay: float = 0.0        # AdamW weight decay
    grad_clip: float = 1.0           # max global gradient norm (0: off)
    ema_decay: float = 0.999         # EMA of the weights, the copy that is sampled from
    label_dropout: float = 0.1       # drop the label this often: learns p(x) too, for guidance
    bf16: bool = True                # bf16 autocast where the hardware has native bf16 (measured faster; attention
    #                                  stays fp32); fp32 elsewhere, where emulated bf16 is many times slower
    channels_last: bool = False      # memory format; measured per backbone
    seed: int = 0                    # everything random (init, data order, noise) derives from it
    log_every: int = 50              # steps between log lines (JSONL)
    log: list[str] = field(default_factory=lambda: ["jsonl"])  # loggers: jsonl (log.jsonl, always written) |
    #                                  tensorboard (OUT/tensorboard, pip install 'undiffuse[tensorboard]') | wandb
    #                                  (offline, OUT/wandb, `wandb sync` later; pip install 'undiffuse[wandb]')
    sample_every: int = 2000         # steps between sample grids from the EMA weights (0: off)
    checkpoint_every: int = 1000     # steps between checkpoints
    keep_checkpoints: int = 2        # how many step checkpoints to keep besides "latest"
    threads: int = 0                 # torch threads (0: all cores)
    max_bad_steps: int = 20          # stop after this many non-finite steps in a row (each one is skipped)
    device: str = "cpu"              # cpu or cuda (under torchrun: one GPU per process)
    kl_weight: float = 1e-6          # autoencoder: weight of the KL term (LDM's kl_weight; tiny: a near-deterministic
    #                                  code whose scale is then fixed by the measured latent scale factor)


@dataclass
class DistillConfig:
    teacher: str = ""                # a model (run folder, file or shipped name) to distil into a few-step one; "": no
    trajectories: int = 20_000       # teacher ODE trajectories, generated once and cached (undiffuse.distill)
    sigmas: list[float] = field(default_factory=lambda: [80.0, 5.0, 1.5, 0.5])  # the student's σ levels, highest
    #                                  first: n-step sampling visits levels 0, L/n, 2L/n, … ("distilled" grid)
    steps_per_level: int = 6         # teacher solver steps between two levels (and from the last level to 0)
    sampler: str = "dpmpp_2m"        # the teacher's solver of the probability-flow ODE
    guidance: float = 0.0            # the teacher's classifier-free guidance, distilled in (0: its card's guidance,
    #                                  its projection sample.guidance_parallel too)
    guidance_interval: list[float] = field(default_factory=list)  # σ range the teacher guides in ([]: its card's
    #                                  sample.guidance_interval; [0, inf]: every σ)
    renoise: bool = False            # below the first level, learn from re-noised trajectory ends x̂ + σ_l·ε (the
    #                                  inputs multistep sampling meets) with the teacher's ODE end from there as target


@dataclass
class SampleConfig:
    sampler: str = "dpmpp_2m"        # default sampler for previews and `undiffuse sample`
    steps: int = 20                  # sampling steps
    grid: str = "karras"             # σ grid: karras | exponential | leading | trailing | linspace | flow, or
    #                                  distilled (a few-step model's levels, distill.sigmas)
    guidance: float = 2.0            # classifier-free guidance scale (1: plain conditional)
    guidance_interval: list[float] = field(default_factory=list)  # [lo, hi]: guide only for σ in it (Kynkäänniemi
    #                                  et al. 2024), one evaluation elsewhere; []: every σ
    eps_scale: float = 1.0           # divide ε̂ by this for σ ≤ 80 (ε scaling, Ning et al. 2024); 1: off
    guidance_parallel: float = 1.0   # weight of the guidance update's component along the conditional x̂0 (adaptive
    #                                  projected guidance's η, Sadat et al. 2024); 1: classifier-free guidance as is
    n: int = 64                      # images in a preview grid


@dataclass
class Config:
    name: str = "run"                # a label for the run and its model
    out_dir: str = "runs/run"        # where checkpoints, logs, samples and the resolved config go
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    space: SpaceConfig = field(default_factory=SpaceConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def validate(self) -> Config:
        """Refuse impossible values, naming the field."""
        if self.train.steps < 0 or (self.train.steps == 0 and not self.train.max_seconds > 0):
            raise UndiffuseError(f"train.steps must be positive, got {self.train.steps} (0, no step budget, needs a "
                                 "time budget: train.max_seconds > 0)")
        positive = {"train.batch_size": self.train.batch_size,
                    "train.grad_accum": self.train.grad_accum, "train.lr": self.train.lr,
                    "data.image_size": self.data.image_size, "model.channels": self.model.channels,
                    "sample.steps": self.sample.steps, "diffusion.timesteps": self.diffusion.timesteps,
                    "train.checkpoint_every": self.train.checkpoint_every,
                    "train.max_bad_steps": self.train.max_bad_steps}
        for key, value in positive.items():
            if value <= 0:
                raise UndiffuseError(f"{key} must be positive, got {value}")
        if self.train.batch_size % self.train.grad_accum:
            raise UndiffuseError(f"train.batch_size ({self.train.batch_size}) must be divisible by "
                                 f"train.grad_accum ({self.train.grad_accum})")
        checks = [("train.ema_decay", 0 <= self.train.ema_decay < 1, "in [0, 1)"),
                  ("train.label_dropout", 0 <= self.train.label_dropout < 1, "in [0, 1)"),
                  ("model.dropout", 0 <= self.model.dropout < 1, "in [0, 1)"),
                  ("data.channels", self.data.channels in (1, 3), "1 or 3"),
                  ("diffusion.parameterization", self.diffusion.parameterization in ("eps", "x0", "v", "edm", "flow"),
                   "eps, x0, v or edm (diffusion) or flow (rectified flow)"),
                  ("diffusion.flow_logit_std", self.diffusion.flow_logit_std > 0, "> 0"),
                  ("diffusion.flow_shift", self.diffusion.flow_shift > 0, "> 0"),
                  ("sample.grid", self.diffusion.parameterization != "flow"
                   or self.sample.grid not in ("leading", "trailing", "linspace"),
                   "karras, exponential or flow for a flow model (leading, trailing and linspace need a discrete "
                   "chain)"),
                  ("model.backbone", self.model.backbone in BACKBONES, ", ".join(BACKBONES)),
                  ("model.patch_size", self.model.patch_size >= 1, "≥ 1"),
                  ("model.text_attention", self.model.text_attention in ("cross", "joint"), "cross or joint"),
                  ("model.latent_channels", self.model.latent_channels >= 1, "≥ 1"),
                  ("train.kl_weight", self.train.kl_weight >= 0, "≥ 0"),
                  ("train.max_seconds", self.train.max_seconds >= 0, "≥ 0"),
                  ("train.lr_schedule", self.train.lr_schedule in LR_SCHEDULES, " or ".join(LR_SCHEDULES)),
                  ("train.lr_final", 0 <= self.train.lr_final <= 1, "in [0, 1]"),
                  ("train.log", all(name in LOGGERS for name in self.train.log), "a list of " + ", ".join(LOGGERS)),
                  ("space.kind", self.space.kind in SPACES, ", ".join(SPACES)),
                  ("train.device", self.train.device in ("cpu", "cuda"), "cpu or cuda"),
                  ("data.name", self.data.name in ("fashion_mnist", "folder", "digits", "toy", *CAPTIONED, *SOUND,
                                                   *VIDEO),
                   "fashion_mnist, folder, digits, toy, emoji, openmoji, emoji+openmoji, tuxpaint, spoken_digits, "
                   "audio_folder, moving_sprites or clip_folder"),
                  ("model.temporal", self.model.temporal in ("attention", "conv", "both"), "attention, conv or both"),
                  ("data.limit", self.data.limit >= 0, "≥ 0"),
                  ("data.recolour", 0 <= self.data.recolour <= 4, "in [0, 4]"),
                  ("data.text_length", 4 <= self.data.text_length <= 512, "in [4, 512]"),
                  ("sample.eps_scale", self.sample.eps_scale > 0, "> 0"),
                  ("sample.guidance_parallel", 0 <= self.sample.guidance_parallel <= 1, "in [0, 1]"),
                  ("distill.trajectories", self.distill.trajectories >= 1, "≥ 1"),
                  ("distill.steps_per_level", self.distill.steps_per_level >= 1, "≥ 1"),
                  ("distill.guidance", self.distill.guidance >= 0, "≥ 0"),
                  ("distill.sigmas", len(self.distill.sigmas) >= 1 and all(s > 0 for s in self.distill.sigmas)
                   and all(a > b for a, b in itertools.pairwise(self.distill.sigmas)),
                   "a non-empty list of positive σ levels, highest first"),
                  *((key, interval == [] or (len(interval) == 2 and 0 <= interval[0] <= interval[1]),
                     "[] or [LO, HI] with 0 ≤ LO ≤ HI")
                    for key, interval in (("sample.guidance_interval", self.sample.guidance_interval),
                                          ("distill.guidance_interval", self.distill.guidance_interval)))]
        for key, ok, allowed in checks:
            if not ok:
                raise UndiffuseError(f"{key} must be {allowed}, got {_get(self, key)!r}")
        if self.space.kind == "latent" and not self.space.autoencoder:
            raise UndiffuseError("space.autoencoder must name an autoencoder (run folder, file or shipped model) "
                                 "when space.kind = 'latent'")
        if self.space.kind == "latent" and self.model.backbone in ("autoencoder", "mlp"):
            raise UndiffuseError(f"model.backbone = {self.model.backbone!r} cannot run in a latent space")
        if self.data.name == "toy" and (self.model.backbone != "mlp" or self.space.kind != "pixels"):
            raise UndiffuseError(f"2-D toy data trains model.backbone = 'mlp' in pixel space, got "
                                 f"{self.model.backbone!r} in {self.space.kind!r}")
        if self.model.backbone == "dit":
            from .nets.dit import dit_size
            dit_size(self.model.dit_size)
        if self.model.text_attention == "joint":
            if self.model.backbone != "dit":
                raise UndiffuseError(f"model.text_attention = 'joint' needs model.backbone = 'dit', got "
                                     f"{self.model.backbone!r}")
            if self.data.name not in CAPTIONED or not self.data.conditional:
                raise UndiffuseError(f"model.text_attention = 'joint' needs text: captioned data "
                                     f"({', '.join(CAPTIONED)}) with data.conditional = true, got "
                                     f"data.name = {self.data.name!r}, data.conditional = {self.data.conditional}")
        if self.model.backbone == "unet" and self.space.kind != "latent":  # a latent grid is checked when built
            factor = 2 ** (len(self.model.channel_mult) - 1)
            if self.data.image_size % factor:
                raise UndiffuseError(f"data.image_size ({self.data.image_size}) must be divisible by the U-Net's "
                                     f"down-sampling factor {factor} (model.channel_mult has "
                                     f"{len(self.model.channel_mult)} levels)")
        if self.data.name == "folder" and not self.data.path:
            raise UndiffuseError("data.path must name an image folder when data.name = 'folder'")
        self._check_betas()
        self._check_sound()
        self._check_video()
        guided = self.data.conditional and self.data.name != "toy" and self.model.backbone != "autoencoder"
        if guided and not self.distill.teacher and self.train.label_dropout == 0 and self.sample.guidance != 1:
            raise UndiffuseError(f"train.label_dropout = 0 leaves the 'no class' token untrained, so sample.guidance "
                                 f"= {self.sample.guidance} would guide against noise: set train.label_dropout > 0 "
                                 "(0.1 is usual) or sample.guidance = 1")
        return self

    def _check_betas(self) -> None:
        """Explicit betas: one per step of a VP chain, each in (0, 1)."""
        d = self.diffusion
        if not d.betas:
            return
        if d.parameterization not in ("eps", "x0", "v") or len(d.betas) != d.timesteps \
                or not all(0 < b < 1 for b in d.betas):
            raise UndiffuseError(f"diffusion.betas must hold diffusion.timesteps ({d.timesteps}) values in (0, 1) for "
                                 f"a VP model (eps, x0 or v), got {len(d.betas)} for {d.parameterization!r}")

    def _check_video(self) -> None:
        """Video data needs frames, pixel space and a U-Net (the space-time one); only video has frames."""
        video = self.data.name in VIDEO
        if video != (self.data.frames > 0):
            raise UndiffuseError(f"data.frames > 0 goes with video data ({', '.join(VIDEO)}) and only with it; got "
                                 f"data.name = {self.data.name!r}, data.frames = {self.data.frames}")
        if not video:
            return
        if not 2 <= self.data.frames <= 64 or self.data.clips < 1:
            raise UndiffuseError(f"data.frames must be in [2, 64] and data.clips ≥ 1, got {self.data.frames} and "
                                 f"{self.data.clips}")
        if self.model.backbone != "unet" or self.space.kind != "pixels":
            raise UndiffuseError(f"video trains the space-time U-Net (model.backbone = 'unet') in pixel space, got "
                                 f"{self.model.backbone!r} in {self.space.kind!r}")
        if self.data.name == "moving_sprites" and self.data.channels != 1:
            raise UndiffuseError("moving_sprites are grayscale: data.channels = 1")
        if self.data.name == "clip_folder" and (not self.data.path or self.data.stride < 1):
            raise UndiffuseError("data.path must name a folder of clips and data.stride be ≥ 1 when data.name = "
                                 "'clip_folder'")

    def _check_sound(self) -> None:
        """Sound data trains in a spectrogram space whose x is the (1, image_size, image_size) grid."""
        sound, spectrogram = self.data.name in SOUND, self.space.kind == "spectrogram"
        if sound != spectrogram:
            raise UndiffuseError(f"sound data ({', '.join(SOUND)}) trains in space.kind = 'spectrogram' and only "
                                 f"sound does; got data.name = {self.data.name!r} in {self.space.kind!r}")
        if not sound:
            return
        s = self.space
        if self.data.name == "audio_folder" and not self.data.path:
            raise UndiffuseError("data.path must name a folder of sound clips when data.name = 'audio_folder'")
        if self.model.backbone not in ("unet", "dit"):
            raise UndiffuseError(f"a spectrogram model needs model.backbone = 'unet' or 'dit', got "
                                 f"{self.model.backbone!r}")
        if self.data.flip:
            raise UndiffuseError("data.flip must be false for sound: a mirrored spectrogram is speech played "
                                 "backwards")
        if self.data.channels != 1 or not self.data.image_size == s.n_mels == s.length // s.hop:
            raise UndiffuseError(f"a spectrogram is 1 × n_mels × (length / hop) = 1 × {s.n_mels} × "
                                 f"{s.length // s.hop}: set data.channels = 1 and data.image_size = space.n_mels = "
                                 f"space.length / space.hop (got channels {self.data.channels}, image_size "
                                 f"{self.data.image_size})")


# --------------------------------------------------------------------------- (de)serialisation
def _check_type(key: str, value: Any, tp: Any) -> Any:
    """Coerce TOML/JSON/CLI values to the field's type, or refuse naming the field."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UndiffuseError(f"{key} must be a list, got {value!r}")
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise TypeError("union fields are not supported")  # pragma: no cover  (none exist)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise UndiffuseError(f"{key} must be a finite number, got {value!r}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise UndiffuseError(f"{key} must be of type {tp.__name__}, got {value!r}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build a (nested) config dataclass from a dict, refusing unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise UndiffuseError(f"{prefix.rstrip('.') or 'config'} must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UndiffuseError(f"unknown config key {prefix}{unknown[0]}; known in "
                             f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(f"{prefix}{name}", value, tp)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain dicts and lists (JSON/TOML-ready)."""
    return dataclasses.asdict(cfg)


def recipe_hash(cfg: Config) -> str:
    """A short fingerprint of the resolved recipe, every field but out_dir (where a run is written is not part of
    how it is made): two models with the same hash were trained from the same settings."""
    data = to_dict(cfg)
    data.pop("out_dir", None)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _parse_value(text: str) -> Any:
    """A CLI value: TOML syntax where it parses (numbers, booleans, lists), else a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a config dict (values in TOML syntax)."""
    for item in overrides:
        if "=" not in item:
            raise UndiffuseError(f"override {item!r} must look like section.key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UndiffuseError(f"override {key!r}: {part} is not a section")
        node[parts[-1]] = _parse_value(text.strip())
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a TOML recipe (or start from defaults), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UndiffuseError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise UndiffuseError(f"{p} is not valid TOML: {err}") from None
    data = apply_overrides(data, overrides or [])
    return from_dict(Config, data).validate()


def config_from_json(text: str) -> Config:
    """A resolved config saved beside a model (JSON), checked like a recipe."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UndiffuseError(f"model config is not valid JSON: {err}") from None
    return from_dict(Config, data).validate()
