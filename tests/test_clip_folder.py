"""A folder of the user's clips: GIF and MP4 read, frames taken at a stride, resized; empty, broken and too-short
clips counted and skipped; a video model trains on it."""

import logging

import pytest
import torch
from typer.testing import CliRunner

from conftest import VIDEO_RECIPE
from undiffuse.cli import app
from undiffuse.data.clip_folder import load_clip_folder
from undiffuse.errors import UndiffuseError
from undiffuse.video_files import write_gif, write_mp4

pytestmark = pytest.mark.usefixtures("one_thread")


def ramp(frames: int, bright: float = 1.0) -> torch.Tensor:
    """A clip (F, 1, 8, 8) in [-1, 1] whose frame i has brightness i / (F − 1)."""
    levels = torch.linspace(-1, -1 + 2 * bright, frames)
    return levels[:, None, None, None].expand(frames, 1, 8, 8).clone()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "clips"
    write_gif(root / "up" / "a.gif", ramp(9))
    write_mp4(root / "up" / "b.mp4", ramp(9))
    write_gif(root / "down" / "c.gif", ramp(9).flip(0))
    write_gif(root / "down" / "short.gif", ramp(3))
    (root / "down" / "empty.mp4").write_bytes(b"")
    (root / "down" / "broken.webm").write_bytes(b"not a video at all" * 10)
    (root / "notes.txt").write_text("ignored")
    return root


def test_clips_are_read_at_a_stride_and_bad_ones_skipped(folder, caplog):
    with caplog.at_level(logging.WARNING):
        data = load_clip_folder(folder, frames=4, size=16, channels=1, stride=2)
    assert data.clips.shape == (3, 4, 1, 16, 16) and data.clips.dtype == torch.uint8
    assert data.class_names == ["down", "up"] and data.labels.tolist() == [0, 1, 1]
    brightness = data.clips.float().mean((2, 3, 4))
    assert brightness[1].tolist() == pytest.approx([0, 64, 128, 191], abs=4)   # frames 0, 2, 4, 6 of 8 steps up
    assert brightness[2].tolist() == pytest.approx([0, 64, 128, 191], abs=6)   # the MP4 alike
    assert brightness[0, 0] > brightness[0, -1]                                 # the clip going down
    reasons = dict(data.skipped)
    assert reasons["down/empty.mp4"] == "empty" and reasons["down/broken.webm"].startswith("unreadable")
    assert reasons["down/short.gif"].startswith("too short: 2 of 4 frames")
    assert "skipped 3 of 6 files" in data.summary and "skipped 3 of 6" in caplog.text


def test_bad_folders_are_one_line_errors(tmp_path):
    with pytest.raises(UndiffuseError, match="does not exist"):
        load_clip_folder(tmp_path / "nope", frames=4, size=16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UndiffuseError, match="no video clips"):
        load_clip_folder(tmp_path / "empty", frames=4, size=16)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.gif").write_bytes(b"GIF89a broken")
    with pytest.raises(UndiffuseError, match="no readable clips"):
        load_clip_folder(tmp_path / "bad", frames=4, size=16)


def test_a_video_model_trains_on_a_clip_folder(folder, tmp_path):
    recipe = tmp_path / "folder.toml"
    text = VIDEO_RECIPE.format(run=tmp_path / "run").replace('name = "moving_sprites"',
                                                             f'name = "clip_folder"\npath = "{folder}"\nstride = 2')
    recipe.write_text(text.replace("steps = 4\n", "steps = 2\n"))
    result = CliRunner().invoke(app, ["train", str(recipe), "--no-progress"])
    assert result.exit_code == 0, result.output + str(result.exception)
    from undiffuse.models import load_model
    model = load_model(tmp_path / "run")
    assert model.space.shape == (4, 1, 16, 16) and model.class_names == ["down", "up"]
