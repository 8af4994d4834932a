"""Spectrogram space for sound: a log-mel spectrogram in [-1, 1] and back by mel inversion + fast Griffin-Lim.

encode: wave (N, L) → STFT magnitude |X| (Hann, n_fft, hop; scaled so a unit sine's bin peaks at 1)
→ mel bands M|X| (triangles of peak 1 on Slaney's mel scale: librosa's ``htk=False, norm=None``, equal to
2e-6) → dB clipped at a fixed floor → x = 2 (dB − db_min) / (db_max − db_min) − 1, so −80 dB is exactly −1
and 0 dB is +1. The range is fixed, not measured per clip, so a level means the same in every clip and
model. On peak-normalised speech (peak 0.95) the loudest bands reach x = 0.98 (Tux Paint's recordings) and
0.93 (espeak-ng), 99 % of values lie below 0.66: x is in [−1, 1] up to rare excursions (a full-scale pure
tone sums its window's main lobe into one band and reaches a few dB more), which decode accepts up to
x = X_MAX (+10 dB); beyond, a cell is taken as X_MAX (noisy or diverged x would otherwise overflow the inverse).

decode: x → dB → mel amplitude → linear magnitude by non-negative least squares (projected gradient
from the clamped pseudo-inverse) → phase by Griffin & Lim (1984) with the momentum of Perraudin, Balazs &
Søndergaard (2013, "A fast Griffin-Lim algorithm", α = 0.99), from one seeded random phase shared by
every clip (so a clip's sound does not depend on its batch). The bands are narrower than a voice's
harmonic spacing only below about 2 kHz; above, the inversion smooths the harmonics within each band,
so the round trip is not exact (bench/audio_representation.py: spectral convergence 0.27 on real speech,
0.26 of it lost in the mel bands before any phase is sought).

At 8 kHz, 8 192 samples, n_fft 512 (64 ms), hop 128 (16 ms, 75 % overlap: what Griffin-Lim needs) and
64 mel bands, x is 1 × 64 × 64. Frame t is centred on sample t·hop; the STFT's last frame (centred on
sample L, past the clip) is dropped so the grid is square.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import UndiffuseError

if TYPE_CHECKING:
    from ..config import Config


X_MAX = 1.25  # the loudest x decode takes: +10 dB above a full-scale sine in one band


def hz_to_mel(f: Tensor) -> Tensor:
    """Slaney's mel scale (Auditory Toolbox): linear below 1 kHz (3 mel / 200 Hz), logarithmic above."""
    f_sp, f_break, logstep = 200 / 3, 1000.0, math.log(6.4) / 27
    return torch.where(f < f_break, f / f_sp, f_break / f_sp + torch.log(f.clamp(min=1e-10) / f_break) / logstep)


def mel_to_hz(m: Tensor) -> Tensor:
    f_sp, f_break, logstep = 200 / 3, 1000.0, math.log(6.4) / 27
    m_break = f_break / f_sp
    return torch.where(m < m_break, m * f_sp, f_break * torch.exp(logstep * (m - m_break)))


def mel_filters(rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None) -> Tensor:
    """(n_mels, n_fft/2+1) triangular filters of peak 1, centres equally spaced in mel (librosa ``norm=None``)."""
    fmax = rate / 2 if fmax is None else fmax
    freqs = torch.linspace(0, rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(float(hz_to_mel(torch.tensor(fmin))), float(hz_to_mel(torch.tensor(fmax))),
                                     n_mels + 2, dtype=torch.float64))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rise, fall = (freqs - lower) / (centre - lower), (upper - freqs) / (upper - centre)
    return torch.clamp(torch.minimum(rise, fall), min=0).float()


def spectral_convergence(s_ref: Tensor, s: Tensor) -> Tensor:
    """‖S_ref − S‖_F / ‖S_ref‖_F per clip over (…, F, T) magnitudes (Sturmel & Daudet 2011)."""
    return torch.linalg.norm((s_ref - s).flatten(-2), dim=-1) / torch.linalg.norm(s_ref.flatten(-2), dim=-1)


def log_spectral_distance(s_ref: Tensor, s: Tensor, floor_db: float = -80.0) -> Tensor:
    """Per clip: the mean over frames of the RMS over frequency of the dB difference, both floored at ``floor_db``
    below the reference's peak (so silence does not dominate)."""
    floor = s_ref.amax(dim=(-2, -1), keepdim=True) * 10 ** (floor_db / 20)
    d = 20 * torch.log10(torch.maximum(s_ref, floor)) - 20 * torch.log10(torch.maximum(s, floor))
    return d.pow(2).mean(dim=-2).sqrt().mean(dim=-1)


@dataclass
class SpectrogramSpace:
    """x = normalised log-mel spectrogram (N, 1, n_mels, frames); decode by NNLS mel inversion + fast Griffin-Lim."""

    rate: int = 8000           # samples per second of the waves
    length: int = 8192         # samples per clip (1.024 s at 8 kHz)
    n_fft: int = 512           # STFT window (Hann) and FFT size: 64 ms, 15.6 Hz bins at 8 kHz
    hop: int = 128             # frame step: 75 % overlap, so Griffin-Lim's consistent spectrograms are well posed
    n_mels: int = 64           # mel bands from fmin to fmax
    fmin: float = 0.0
    fmax: float | None = None  # None: rate / 2
    db_min: float = -80.0      # the floor, x = −1: 80 dB below a full-scale sine (16-bit quiet is −96 dB)
    db_max: float = 0.0        # x = +1: a full-scale sine inside one band
    gl_iters: int = 64         # Griffin-Lim iterations when decoding
    momentum: float = 0.99     # Perraudin et al. 2013's α; 0 is the classic Griffin-Lim
    nnls_iters: int = 200      # projected-gradient steps of the mel → linear inversion (0: clamped pseudo-inverse)
    seed: int = 0              # of the initial phase
    kind: str = "spectrogram"

    def __post_init__(self):
        if self.length % self.hop or self.n_fft < self.hop or self.n_fft % 2:
            raise UndiffuseError(f"spectrogram: length {self.length} must be a multiple of hop {self.hop}, and n_fft "
                                 f"{self.n_fft} even and at least hop")
        if not self.db_min < self.db_max:
            raise UndiffuseError(f"spectrogram: db_min {self.db_min} must be below db_max {self.db_max}")
        if (self.fmax or self.rate / 2) > self.rate / 2 or self.fmin >= (self.fmax or self.rate / 2):
            raise UndiffuseError(f"spectrogram: need fmin < fmax ≤ rate/2, got {self.fmin}, {self.fmax}, {self.rate}")

    @property
    def frames(self) -> int:
        return self.length // self.hop

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1, self.n_mels, self.frames)

    def settings(self) -> dict[str, Any]:
        """The parameters as a JSON-able dict (for a model's config); :meth:`from_settings` reverses it."""
        return asdict(self)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> SpectrogramSpace:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown or settings.get("kind", "spectrogram") != "spectrogram":
            raise UndiffuseError(f"not spectrogram settings: unknown {unknown or settings.get('kind')}")
        return cls(**settings)

    @cached_property
    def window(self) -> Tensor:
        return torch.hann_window(self.n_fft, periodic=True)

    @cached_property
    def filters(self) -> Tensor:
        return mel_filters(self.rate, self.n_fft, self.n_mels, self.fmin, self.fmax)  # (M, F)

    @cached_property
    def _pinv(self) -> Tensor:
        return torch.linalg.pinv(self.filters.double()).float()  # (F, M)

    @property
    def _scale(self) -> float:
        return 2.0 / float(self.window.sum())  # |X| of a unit-amplitude sine at a bin centre → 1

    def stft(self, waves: Tensor) -> Tensor:
        """(N, L) → complex (N, F, frames), unscaled."""
        spec = torch.stft(waves.float(), self.n_fft, self.hop, window=self.window.to(waves.device), center=True,
                          pad_mode="constant", return_complex=True)
        return spec[..., :self.frames]

    def istft(self, spec: Tensor) -> Tensor:
        """complex (N, F, frames) → (N, L): least-squares overlap-add (Griffin & Lim 1984, eq. 6)."""
        return torch.istft(spec, self.n_fft, self.hop, window=self.window.to(spec.device), center=True,
                           length=self.length)

    def magnitude(self, waves: Tensor) -> Tensor:
        """(N, L) → (N, F, frames) STFT magnitude, a full-scale sine at 1."""
        return self.stft(waves).abs() * self._scale

    def mel(self, waves: Tensor) -> Tensor:
        """(N, L) → (N, n_mels, frames) mel amplitudes."""
        return self.filters.to(waves.device) @ self.magnitude(waves)

    def to_x(self, mel: Tensor) -> Tensor:
        db = 20 * torch.log10(mel.clamp(min=10 ** (self.db_min / 20)))
        return (2 * (db - self.db_min) / (self.db_max - self.db_min) - 1)[:, None]

    def to_mel(self, x: Tensor) -> Tensor:
        """(N, 1, M, T) → (N, M, T) mel amplitudes; at or below the floor (x ≤ −1) is silence, 0."""
        x = x[:, 0].float()
        db = (x + 1) / 2 * (self.db_max - self.db_min) + self.db_min
        return torch.where(x <= -1, torch.zeros_like(x), 10 ** (db / 20))

    def encode(self, waves: Tensor) -> Tensor:
        """(N, L) waves in [-1, 1] → (N, 1, n_mels, frames) normalised log-mel spectrograms."""
        if waves.ndim != 2 or waves.shape[-1] != self.length:
            raise UndiffuseError(f"spectrogram: expected waves (N, {self.length}), got {tuple(waves.shape)}")
        return self.to_x(self.mel(waves))

    def mel_to_linear(self, mel: Tensor) -> Tensor:
        """(N, M, T) → (N, F, T) ≥ 0 minimising ‖M s − m‖²: projected gradient, step 1/‖M‖², from the clamped
        pseudo-inverse (what librosa's mel_to_stft solves with L-BFGS-B)."""
        fb = self.filters.to(mel.device)
        s = (self._pinv.to(mel.device) @ mel).clamp(min=0)
        step = 1.0 / float(torch.linalg.matrix_norm(fb, ord=2)) ** 2
        for _ in range(self.nnls_iters):
            s = (s - step * (fb.T @ (fb @ s - mel))).clamp(min=0)
        return s

    def initial_phase(self, like: Tensor) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        phase = torch.rand(like.shape[-2:], generator=g) * (2 * math.pi)  # (F, T): one for every clip
        return torch.polar(torch.ones_like(phase), phase).to(like.device)

    def griffin_lim(self, magnitude: Tensor, iters: int | None = None, momentum: float | None = None,
                    phase_from: Tensor | None = None) -> Tensor:
        """(N, F, T) scaled magnitude → (N, L) wave by fast Griffin-Lim (Perraudin et al. 2013, Algorithm 2):
        t_n = P_C1(P_C2(c_{n−1})), c_n = t_n + α (t_n − t_{n−1}); α = 0 is Griffin & Lim (1984). The phase starts
        from the seeded random one, or from the STFT of the waves ``phase_from`` (N, L) where given (a task's input:
        a noisy or gapped recording whose phase is nearer the answer than noise is)."""
        iters = self.gl_iters if iters is None else iters
        alpha = self.momentum if momentum is None else momentum
        target = magnitude / self._scale
        if phase_from is not None:
            spec = self.stft(phase_from.to(target.device))
            angles = torch.where(spec.abs() > 1e-8, spec / (spec.abs() + 1e-12), self.initial_phase(target))
        else:
            angles = self.initial_phase(target).expand_as(target)
        t_prev = None
        for _ in range(iters):
            t = self.stft(self.istft(target * angles))  # projection onto consistent spectrograms
            c = t if t_prev is None else t + alpha * (t - t_prev)
            t_prev = t
            angles = c / (c.abs() + 1e-12)
        return self.istft(target * angles)

    @torch.no_grad()
    def decode(self, x: Tensor, phase_from: Tensor | None = None) -> Tensor:
        """(N, 1, n_mels, frames) → (N, L) waves in [-1, 1] (``phase_from``: see :meth:`griffin_lim`)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
            raise UndiffuseError(f"spectrogram: expected x (N, {', '.join(map(str, self.shape))}), "
                                 f"got {tuple(x.shape)}")
        x = torch.nan_to_num(x.float(), nan=-1.0).clamp(max=X_MAX)
        return self.griffin_lim(self.mel_to_linear(self.to_mel(x)), phase_from=phase_from).clamp(-1, 1)

    @torch.no_grad()
    def masked(self, x: Tensor, noisy: Tensor) -> Tensor:
        """(N, 1, n_mels, frames) clean estimate of the noisy waves (N, L) → (N, L): the noisy STFT times the gain
        clean / noisy per mel band and frame, clipped to [0, 1] and spread over the linear bins by the filterbank,
        heard with the recording's own phase (a mask estimated by the model; speech enhancement's usual way back to
        a wave, where Griffin-Lim would have to guess the phase again)."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.shape:
            raise UndiffuseError(f"spectrogram: expected x (N, {', '.join(map(str, self.shape))}), "
                                 f"got {tuple(x.shape)}")
        clean = self.to_mel(torch.nan_to_num(x.float(), nan=-1.0).clamp(max=X_MAX))   # (N, M, T)
        noisy = noisy.to(clean.device).expand(len(x), -1)
        gain = (clean / self.mel(noisy).clamp(min=1e-8)).clamp(0, 1)                    # (N, M, T)
        fb = self.filters.to(clean.device)                                              # (M, F)
        spread = (fb.T @ gain) / fb.sum(0).clamp(min=1e-8)[:, None]                     # (N, F, T)
        return self.istft(self.stft(noisy) * spread).clamp(-1, 1)

    def picture(self, x: Tensor) -> Tensor:
        """(N, 1, n_mels, frames) → (N, 3, n_mels, frames) RGB in [-1, 1]: :func:`spectrogram_picture`."""
        return spectrogram_picture(x)


def spectrogram_picture(x: Tensor, colormap: str = "magma") -> Tensor:
    """Spectrograms x (N, 1, M, T) in [-1, 1] as RGB pictures (N, 3, M, T) in [-1, 1]: low frequencies at the
    bottom, as spectrograms are drawn, in a perceptually uniform colour map (−80 dB dark, 0 dB bright)."""
    from matplotlib import colormaps

    level = ((x[:, 0].detach().float().cpu().clamp(-1, 1) + 1) / 2).flip(-2)  # (N, M, T), row 0 = highest band
    rgb = torch.from_numpy(colormaps[colormap](level.numpy())[..., :3]).float()  # (N, M, T, 3)
    return rgb.permute(0, 3, 1, 2) * 2 - 1


def spectrogram_space(cfg: Config) -> SpectrogramSpace:
    """The spectrogram space a config's ``[space]`` describes (kind = "spectrogram")."""
    s = cfg.space
    return SpectrogramSpace(rate=s.rate, length=s.length, n_fft=s.n_fft, hop=s.hop, n_mels=s.n_mels)
