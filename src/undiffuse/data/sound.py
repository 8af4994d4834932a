"""Sound training data: clips turned once into the spectrogram space's x, held as images of the spectrogram.

Every clip becomes x = encode(wave) (:class:`~undiffuse.spaces.spectrogram.SpectrogramSpace`), stored as uint8
like an image set (0.31 dB per level over the 80 dB range, below what the ear tells apart), so the training
loop, the classifier-free label dropout and every backbone treat a spectrogram as a one-channel image.
"""

from __future__ import annotations

import logging

import torch

from ..config import Config
from ..errors import UndiffuseError
from ..spaces.spectrogram import SpectrogramSpace, spectrogram_space
from .audio import AudioData
from .images import ImageData, to_uint8

log = logging.getLogger(__name__)


def load_sound(cfg: Config, split: str = "train") -> AudioData:
    """The clips a sound config names: the spoken digits (``split``: train or heldout) or a folder of clips."""
    s, d = cfg.space, cfg.data
    if d.name == "spoken_digits":
        from .spoken_digits import load_spoken_digits
        return load_spoken_digits(split, rate=s.rate, length=s.length)
    if d.name == "audio_folder":
        from .audio_folder import load_audio_folder
        return load_audio_folder(d.path, rate=s.rate, length=s.length)
    raise UndiffuseError(f"data.name = {d.name!r} is not sound")


def spectrogram_images(audio: AudioData, space: SpectrogramSpace, batch_size: int = 256) -> ImageData:
    """The clips as uint8 spectrogram images (N, 1, n_mels, frames) with their labels and class names."""
    if len(audio) == 0:
        raise UndiffuseError("no sound clips to train on")
    if audio.rate != space.rate or audio.length != space.length:
        raise UndiffuseError(f"clips of {audio.length} samples at {audio.rate} Hz, the space takes {space.length} "
                             f"at {space.rate} Hz")
    x = torch.cat([to_uint8(space.encode(audio.waves[i:i + batch_size]))
                   for i in range(0, len(audio), batch_size)])
    return ImageData(x, audio.labels, list(audio.class_names), skipped=list(audio.skipped), summary=audio.summary)


def load_sound_images(cfg: Config, split: str = "train") -> ImageData:
    """:func:`load_sound` encoded into the config's spectrogram space, limited to ``data.limit`` clips."""
    audio = load_sound(cfg, split)
    images = spectrogram_images(audio, spectrogram_space(cfg))
    if cfg.data.limit:
        images = images.subset(torch.arange(min(cfg.data.limit, len(images))))
    log.info("sound: %d clips of %s as %d×%d spectrograms", len(images), cfg.data.name, *images.images.shape[-2:])
    return images
