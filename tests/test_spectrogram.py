"""The spectrogram space: shapes, range, settings, the mel scale, and the round trip of real recorded speech.

Bounds for the round trip (measured on Tux Paint's 20 English digits, bench/audio_representation.py):
the 64 mel bands alone keep only so much of the 257 linear bins: the best non-negative linear magnitude
consistent with them has spectral convergence SC 0.26, so no decoder can do much better than that;
NNLS + fast Griffin-Lim (64 it.) reaches 0.27, librosa's pipeline 0.27 as well, while a random phase
(0 iterations) gives 0.67. The bound 0.32 sits between, with room for BLAS/FFT rounding and the machine
load; in the space's own units, re-encoding the decoded clip differs from x by 0.015 (random phase: 0.105),
bound 0.025. Griffin-Lim on the true |X| (no mel loss) reaches SC 0.057: bound 0.08.
"""

import math

import pytest
import torch

from undiffuse.data.tux_digits import MATH_STAMPS, load_tux_digits
from undiffuse.errors import UndiffuseError
from undiffuse.spaces.spectrogram import (SpectrogramSpace, hz_to_mel, log_spectral_distance, mel_filters, mel_to_hz,
                                          spectral_convergence)

needs_tux = pytest.mark.skipif(not MATH_STAMPS.is_dir(), reason="tuxpaint-stamps-default not installed")
pytestmark = pytest.mark.usefixtures("one_thread")  # 64 × 64 FFTs gain nothing from a second thread


@pytest.fixture(scope="module")
def tux():
    return load_tux_digits().waves  # (20, 8192) at 8 kHz


def test_shapes_and_range():
    space = SpectrogramSpace()
    assert space.shape == (1, 64, 64) and space.kind == "spectrogram"
    t = torch.arange(8192) / 8000
    waves = torch.stack([torch.zeros(8192), 0.5 * torch.sin(2 * math.pi * 440 * t), 0.1 * torch.randn(8192)])
    x = space.encode(waves)
    assert x.shape == (3, 1, 64, 64) and x.dtype == torch.float32
    assert (x[0] == -1).all()                       # silence is the floor, exactly
    assert x.min() >= -1 and x.max() <= 1.1          # a loud pure tone may pass 0 dB by a few dB
    y = space.decode(x)
    assert y.shape == (3, 8192) and y.abs().max() <= 1 and (y[0] == 0).all()
    small = SpectrogramSpace(length=4096, hop=128, n_fft=256, n_mels=32)
    assert small.encode(waves[:, :4096]).shape == (3, 1, 32, 32)
    with pytest.raises(UndiffuseError, match="expected waves"):
        space.encode(waves[:, :4000])
    with pytest.raises(UndiffuseError, match="expected x"):
        space.decode(x[:, :, :32])


def test_settings_round_trip_and_validation():
    space = SpectrogramSpace(gl_iters=16, db_min=-70.0)
    settings = space.settings()
    assert settings["kind"] == "spectrogram" and settings["n_mels"] == 64
    assert SpectrogramSpace.from_settings(settings) == space
    with pytest.raises(UndiffuseError, match="unknown"):
        SpectrogramSpace.from_settings({**settings, "bogus": 1})
    with pytest.raises(UndiffuseError, match="multiple of hop"):
        SpectrogramSpace(length=8000, hop=128)
    with pytest.raises(UndiffuseError, match="db_min"):
        SpectrogramSpace(db_min=0.0, db_max=-10.0)


def test_mel_scale_and_filters():
    f = torch.tensor([0.0, 500.0, 1000.0, 2000.0, 3999.0], dtype=torch.float64)
    assert torch.allclose(mel_to_hz(hz_to_mel(f)), f)
    assert float(hz_to_mel(torch.tensor(1000.0))) == pytest.approx(15.0)  # Slaney: 3 mel per 200 Hz up to 1 kHz
    fb = mel_filters(8000, 512, 64)
    assert fb.shape == (64, 257) and fb.min() >= 0 and fb.max() <= 1
    centres = fb.argmax(dim=1)
    assert (centres.diff() >= 0).all() and centres[-1] > 240  # increasing centres up to Nyquist
    assert (fb.sum(dim=0)[2:-2] > 0).all()                      # every bin but the edges is covered


def test_metrics():
    s = torch.rand(2, 257, 64) + 0.1
    assert torch.allclose(spectral_convergence(s, s), torch.zeros(2))
    assert torch.allclose(spectral_convergence(s, 2 * s), torch.ones(2))
    assert torch.allclose(log_spectral_distance(s, 10 * s), torch.full((2,), 20.0), atol=1e-3)


def test_decode_is_batch_independent():
    space = SpectrogramSpace(gl_iters=8)
    x = space.encode(0.1 * torch.randn(3, 8192, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(space.decode(x)[1:2], space.decode(x[1:2]), atol=1e-5)


@needs_tux
def test_round_trip_of_real_speech(tux):
    space = SpectrogramSpace()
    x = space.encode(tux)
    assert -1 <= x.min() and x.max() <= 1
    y = space.decode(x)
    ref = space.magnitude(tux)
    sc = spectral_convergence(ref, space.magnitude(y)).mean()
    assert sc < 0.32, f"spectral convergence {sc:.3f} (measured 0.27; mel ceiling 0.26; random phase 0.67)"
    mae = (space.encode(y) - x).abs().mean()
    assert mae < 0.025, f"x re-encoded differs by {mae:.4f} (measured 0.015; random phase 0.105)"
    random_phase = space.griffin_lim(space.mel_to_linear(space.to_mel(x)), iters=0)
    assert spectral_convergence(ref, space.magnitude(random_phase)).mean() > 0.5  # the bound does discriminate


@needs_tux
def test_griffin_lim_on_true_magnitude_and_momentum(tux):
    space = SpectrogramSpace()
    ref = space.magnitude(tux)
    oracle = spectral_convergence(ref, space.magnitude(space.griffin_lim(ref))).mean()
    assert oracle < 0.08, f"Griffin-Lim on the true |X|: SC {oracle:.3f} (measured 0.057)"
    # Perraudin et al. 2013: at equal iterations the momentum converges further (measured x-MAE 0.018 vs 0.021)
    x = space.encode(tux)
    lin = space.mel_to_linear(space.to_mel(x))
    err = {a: (space.encode(space.griffin_lim(lin, iters=16, momentum=a)) - x).abs().mean() for a in (0.0, 0.99)}
    assert err[0.99] < err[0.0]
