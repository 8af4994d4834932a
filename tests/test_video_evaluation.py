"""The video measures: tracking finds the sprite, the physics error separates real motion from shuffled frames, the
identity cosine separates one garment from changing ones, and the sprite judge recognises real sprites."""

import pytest
import torch

from undiffuse.data.moving_sprites import moving_sprites, render
from undiffuse.errors import UndiffuseError
from undiffuse.evaluation.video import (clip_measures, compare_clips, garment_crops, motion_error, sprite_views,
                                        track)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def judge():
    from undiffuse.evaluation.classifier import load_classifier
    from undiffuse.evaluation.video import SPRITE_JUDGE
    return load_classifier(SPRITE_JUDGE)


@pytest.fixture(scope="module")
def clips():
    return moving_sprites(120, frames=8, split="test", seed=5)


def test_track_finds_the_centre_of_a_square():
    square = torch.full((2, 1, 4, 4), 255, dtype=torch.uint8)
    at = torch.tensor([[[0.0, 0.0], [3.0, 10.0]], [[12.0, 5.0], [7.0, 7.0]]])
    centres = track(render(square, at, 16))
    assert torch.allclose(centres, at + 2, atol=1e-4)  # top-left + half the side
    assert track(torch.zeros(1, 2, 1, 8, 8, dtype=torch.uint8)).eq(4).all()  # a black frame: the middle


def test_crops_put_the_sprite_back_in_the_middle():
    garment = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    garment[..., 2:6, 2:6] = 255
    clip = render(garment, torch.tensor([[[1.0, 20.0]]]), 32)
    crop = garment_crops(clip, track(clip), 8)
    assert crop.shape == (1, 1, 32, 32)
    lit = (crop[0, 0] > 0).nonzero().float().mean(0)
    assert torch.allclose(lit, torch.tensor([15.5, 15.5]), atol=0.6)


def test_motion_error_is_small_for_the_physics_and_large_for_shuffled_frames(clips):
    centres = track(clips.clips)
    real_error, real_speed = motion_error(centres)
    shuffled_error, _ = motion_error(centres[:, torch.randperm(8, generator=torch.Generator().manual_seed(0))])
    assert 1.0 <= real_speed <= 2.5                              # the generator's speed range, per axis ≤ speed
    assert real_error < 0.6 < 1.2 < shuffled_error
    assert motion_error(centres[:, :1].expand(-1, 8, -1)) == (0.0, 0.0)   # still: no error and no speed
    with pytest.raises(UndiffuseError, match="3 frames"):
        motion_error(centres[:, :2])


def test_identity_drops_when_the_garment_changes_between_frames(clips, judge):
    same, _ = clip_measures(clips.clips, clips.labels, judge, 16)
    mixed = clips.clips.clone()
    mixed[:, 4:] = clips.clips.roll(1, dims=0)[:, 4:]              # another clip's garment from frame 4 on
    changed, _ = clip_measures(mixed, clips.labels, judge, 16)
    assert same.identity > 0.97 and changed.identity < same.identity - 0.05
    assert changed.all_frames_agree < same.all_frames_agree


def test_the_sprite_judge_recognises_real_sprites(clips, judge):
    scores, _ = clip_measures(clips.clips, clips.labels, judge, 16)
    assert scores.frame_accuracy > 0.8                           # its test accuracy on sprite views: config.json
    assert scores.all_frames_asked <= scores.frame_accuracy
    assert judge.config["test_accuracy"] > 0.8
    from undiffuse.data.fashion_mnist import load_fashion_mnist
    views = sprite_views(load_fashion_mnist("test", size=28, limit=200).images, 16)
    assert views.shape == (200, 1, 32, 32) and views.dtype == torch.uint8


def test_real_clips_score_as_real_against_real(clips, judge):
    other = moving_sprites(120, frames=8, split="test", seed=6)
    held = moving_sprites(120, frames=8, split="test", seed=7)
    ev = compare_clips(other.clips, other.labels, clips.clips, clips.labels, held.clips, judge, 16)
    noise = torch.rand(120, 8, 1, 32, 32) * 2 - 1
    worse = compare_clips(noise, other.labels, clips.clips, clips.labels, held.clips, judge, 16)
    assert ev.frame_fd < 2 * ev.frame_fd_floor + 1 and worse.frame_fd > 10 * ev.frame_fd
    assert "FVD" not in ev.table() and "not available offline" in ev.to_dict()["fvd"]
