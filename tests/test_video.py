"""Video groundwork: the moving-sprites clips follow their physics, and the space-time U-Net starts as its image net
per frame (inflation), mixes frames once trained, masks its temporal layers per clip, and trains."""

import pytest
import torch

from undiffuse.data.moving_sprites import bounce, direction_words, moving_sprites
from undiffuse.errors import UndiffuseError
from undiffuse.nets.unet import UNet
from undiffuse.nets.video_unet import VideoUNet, inflate

from conftest import VIDEO_RECIPE

pytestmark = pytest.mark.usefixtures("one_thread")

NET = dict(in_channels=1, image_size=16, channels=8, channel_mult=(1, 2), num_res_blocks=1,
           attention_resolutions=(8,), dropout=0.0, num_heads=2, groups=4, num_classes=3)


def test_bounce_is_a_straight_line_folded_at_the_walls():
    pos = bounce(torch.tensor([[1.0, 5.0]]), torch.tensor([[-1.0, 2.0]]), 6, limit=8.0)
    assert pos[0, :, 0].tolist() == [1, 0, 1, 2, 3, 4]           # reflected at 0
    assert pos[0, :, 1].tolist() == [5, 7, 7, 5, 3, 1]           # reflected at 8: 9 → 7, 11 → 5
    assert direction_words(torch.tensor([[0.0, -2.0], [-1.0, 1.0], [2.0, 0.1]])) == ["left", "up and right", "down"]


def test_moving_sprites_are_seeded_and_follow_their_positions():
    a = moving_sprites(6, frames=5, size=32, sprite=16, seed=3)
    b = moving_sprites(6, frames=5, size=32, sprite=16, seed=3)
    assert torch.equal(a.clips, b.clips) and a.captions == b.captions
    assert a.clips.shape == (6, 5, 1, 32, 32) and a.clips.dtype == torch.uint8 and a.positions.shape == (6, 5, 2)
    assert all(c.startswith("a ") and " moving " in c for c in a.captions)
    for i in range(6):
        for f in range(5):  # the ink's bounding box sits inside the sprite box at the recorded position
            ys, xs = torch.nonzero(a.clips[i, f, 0] > 30, as_tuple=True)
            r, c = a.positions[i, f].round().long().tolist()
            assert ys.min() >= r and ys.max() < r + 16 and xs.min() >= c and xs.max() < c + 16
    with pytest.raises(UndiffuseError, match="sprite < size"):
        moving_sprites(2, size=16, sprite=16)


def test_inflated_video_net_is_the_image_net_per_frame():
    torch.manual_seed(0)
    image = UNet(**NET)
    for p in image.parameters():  # random weights everywhere, the zero-initialised outputs too
        torch.nn.init.normal_(p, std=0.05)
    for kind in ("attention", "conv", "both"):
        video = VideoUNet(frames=4, temporal=kind, **NET)
        inflate(video, image.state_dict())
        x, t, y = torch.randn(2, 4, 1, 16, 16), torch.tensor([10, 500]), torch.tensor([0, 2])
        out = video(x, t, y)
        per_frame = image(x.reshape(8, 1, 16, 16), t.repeat_interleave(4), y.repeat_interleave(4))
        assert out.shape == (2, 4, 1, 16, 16)
        torch.testing.assert_close(out.reshape(8, 1, 16, 16), per_frame, rtol=1e-5, atol=1e-5)


def test_temporal_layers_mix_frames_and_the_mask_turns_them_off():
    torch.manual_seed(1)
    video = VideoUNet(frames=4, temporal="both", **NET)
    for p in video.parameters():
        torch.nn.init.normal_(p, std=0.05)
    for p in video.temporal.parameters():  # strong temporal layers, so that frames visibly talk
        torch.nn.init.normal_(p, std=0.5)
    x, t = torch.randn(2, 4, 1, 16, 16), torch.tensor([100, 100])
    base = video(x, t)
    changed = x.clone()
    changed[:, 0] += 1.0  # change the first frame only
    after = video(changed, t)
    scale = base.abs().mean()
    assert (after[:, 3] - base[:, 3]).abs().max() > 0.01 * scale  # the last frame hears about the first
    masked = video(changed, t, temporal_mask=torch.tensor([0.0, 1.0]))
    alone = video.image(changed[0], t[:1].expand(4))
    torch.testing.assert_close(masked[0], alone, rtol=1e-5, atol=1e-5)  # clip 0: per frame, as the image net
    assert (masked[1] - after[1]).abs().max() < 1e-6                    # clip 1: unchanged
    with pytest.raises(UndiffuseError, match="takes clips"):
        video(torch.randn(2, 1, 16, 16), t)


def test_a_tiny_video_net_learns_a_moving_square():
    """Trained on a square moving right by 2 px a frame, its x̂₀ from a noisy clip moves right too."""
    torch.manual_seed(0)
    net = VideoUNet(frames=4, temporal="attention", **{**NET, "num_classes": 0})
    clips = -torch.ones(16, 4, 1, 16, 16)
    for i in range(16):
        r = i % 10
        for f in range(4):
            clips[i, f, 0, r:r + 4, 2 * f + 2:2 * f + 6] = 1.0
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for step in range(60):
        noise = torch.randn_like(clips) * 0.5
        loss = (net(clips + noise, torch.full((16,), 250)) + noise - clips).pow(2).mean()  # predicts x0 - x
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_a_video_model_trains_and_samples_gif_mp4_and_strips(video_run, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from undiffuse.cli import app
    from undiffuse.images import read_params
    from undiffuse.video_files import read_gif_params, read_mp4

    assert (video_run / "samples" / "step_00000004.png").is_file()  # the preview: a strip per clip
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sample", str(video_run), "--class", "Sneaker", "--n", "2", "--seed", "3",
                                      "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "sampled 2 videos" in result.output
    name = "0001_seed4_Sneaker"
    with Image.open(out / f"{name}.gif") as gif:
        assert gif.n_frames == 4 and gif.size == (64, 64)
    assert read_gif_params(out / f"{name}.gif")["seed"] == 4
    frames, params = read_mp4(out / f"{name}.mp4")
    assert len(frames) == 4 and frames[0].shape == (64, 64, 3) and params["class"] == "Sneaker"
    assert read_params(out / f"{name}.png")["frames"] == 4
    with Image.open(out / "grid.png") as grid:
        assert grid.width > grid.height  # one strip of 4 frames per row


def test_every_sampler_runs_on_a_video_model(video_run):
    from undiffuse import samplers
    from undiffuse.models import load_model
    from undiffuse.sampling import SampleRequest, generate

    model = load_model(video_run)
    assert model.space.shape == (4, 1, 16, 16)
    for name in samplers.names():
        clips, _ = generate(model, SampleRequest(n=1, sampler=name, steps=2, grid="trailing", label=1),
                            progress=False)
        assert clips.shape == (1, 4, 1, 16, 16) and torch.isfinite(clips).all(), name


def test_video_recipes_are_checked(tmp_path):
    from undiffuse.config import load_config
    recipe = tmp_path / "r.toml"
    for old, new, says in (("frames = 4", "frames = 0", "data.frames > 0 goes with video"),
                           ("frames = 4", "frames = 1", r"data.frames must be in \[2, 64\]"),
                           ('temporal = "both"', 'temporal = "space"', "model.temporal must be")):
        recipe.write_text(VIDEO_RECIPE.format(run=tmp_path / "run").replace(old, new))
        with pytest.raises(UndiffuseError, match=says):
            load_config(recipe)


def test_train_init_inflates_an_image_model(tmp_path):
    """A video recipe with train.init naming an image model of the same [model] starts as that model per frame."""
    from typer.testing import CliRunner

    from undiffuse.cli import app
    from undiffuse.models import load_model
    image_recipe = VIDEO_RECIPE.format(run=tmp_path / "image").replace('name = "moving_sprites"',
                                                                        'name = "fashion_mnist"')
    image_recipe = image_recipe.replace("frames = 4\n", "").replace("clips = 64\n", "")
    (tmp_path / "image.toml").write_text(image_recipe)
    video_recipe = VIDEO_RECIPE.format(run=tmp_path / "video").replace("[train]\n",
                                                                       f"[train]\ninit = '{tmp_path / 'image'}'\n")
    (tmp_path / "video.toml").write_text(video_recipe.replace("warmup = 2", "warmup = 2\nlr = 1e-12\nema_decay = 0.0"))
    runner = CliRunner()
    for name in ("image", "video"):
        result = runner.invoke(app, ["train", str(tmp_path / f"{name}.toml"), "--no-progress", "--set",
                                     "train.sample_every=0"])
        assert result.exit_code == 0, result.output + str(result.exception)
    image, video = load_model(tmp_path / "image"), load_model(tmp_path / "video")
    x, t = torch.randn(1, 4, 1, 16, 16), torch.tensor([300])
    with torch.no_grad():
        per_frame = image.denoiser.net(x[0], t.expand(4), torch.full((4,), 2))
        clip = video.denoiser.net(x, t, torch.tensor([2]))
    torch.testing.assert_close(clip[0], per_frame, rtol=1e-4, atol=1e-4)


def test_the_studio_shows_a_video_model_as_clips(video_run, tmp_path):
    """A video model's studio job writes GIF, MP4 and PNG strip per clip; the history serves them with their types."""
    pytest.importorskip("starlette")
    import http.client
    from urllib.parse import urlsplit

    from undiffuse.studio.client import StudioClient
    from undiffuse.studio.server import BackgroundStudio

    with BackgroundStudio(video_run.parent, tmp_path) as server:
        c = StudioClient(server.url)
        entry = {m["id"]: m for m in c.get("/api/models")["models"]}["run:run"]
        assert entry["frames"] == 4 and entry["tasks"] == ["generate"]
        done = c.wait(c.submit(model="run:run", steps=2, n=2, seed=1, **{"class": "Bag"})["id"], timeout=300)
        assert done["state"] == "done", done
        urls = done["result"]["urls"]
        assert len(urls["videos"]) == 2 and all(u.endswith(".gif") for u in urls["videos"])
        parts = urlsplit(server.url)
        for url, kind in ((urls["videos"][0], "image/gif"), (urls["videos"][0][:-4] + ".mp4", "video/mp4")):
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            conn.request("GET", url)
            res = conn.getresponse()
            assert res.status == 200 and res.getheader("content-type").startswith(kind) and len(res.read()) > 100
            conn.close()


def test_evaluate_scores_a_video_model_against_real_clips(video_run, tmp_path):
    import json

    from typer.testing import CliRunner

    from undiffuse.cli import app
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", str(video_run), "--n", "6", "--steps", "2", "--animate", "3",
                                      "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output + str(result.exception)
    assert "per-axis speed change" in result.output and "FVD: not measured" in result.output
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["n"] == 6 and 0 <= saved["generated"]["frame_accuracy"] <= 1
    assert saved["real"]["speed"] > 0.5 and saved["frame_fd_floor"] >= 0
    moved = saved["image_to_video"]       # the first frames of 3 real clips animated: kept exactly
    assert moved["n"] == 3 and moved["first_frame_error"] == 0.0 and "given frame kept" in result.output
    assert moved["real_first_step"] > 0.5 and moved["first_step"] >= 0 and 0 <= moved["generated"]["identity"] <= 1
    two = CliRunner().invoke(app, ["evaluate", str(video_run), "--steps", "2,4", "--no-progress"])
    assert two.exit_code != 0 and "one setting" in str(two.exception)


def test_animate_keeps_the_first_frame_and_makes_the_rest(video_run, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from undiffuse.cli import app
    from undiffuse.models import load_model
    from undiffuse.sampling import SampleRequest
    from undiffuse.tasks import animate
    from undiffuse.video_files import read_gif_params

    model = load_model(video_run)
    first = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    clips = animate(model, first, SampleRequest(n=2, steps=3, label=1, sampler="euler"))
    assert clips.shape == (2, 4, 1, 16, 16) and torch.equal(clips[:, 0], first.expand(2, 1, 16, 16))
    assert not torch.equal(clips[0, 1:], clips[1, 1:])            # two seeds, two continuations
    frame = tmp_path / "first.png"
    Image.fromarray(((first[0] + 1) * 127.5).round().byte().numpy(), "L").save(frame)
    out = tmp_path / "anim"
    result = CliRunner().invoke(app, ["animate", str(frame), "--model", str(video_run), "--class", "Sneaker",
                                      "--n", "2", "--steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output + str(result.exception)
    params = read_gif_params(out / "0000_seed0_Sneaker.gif")
    assert params["task"] == "image-to-video" and params["image"] == str(frame)
    assert params["resample"] == 1 and params["guide"] == 5.0          # the measured defaults (tasks/video.py)
    refused = CliRunner().invoke(app, ["animate", str(frame), "--model", "fashion-mnist"])
    assert refused.exit_code != 0 and "not a video model" in str(refused.exception)
    with pytest.raises(UndiffuseError, match="first frame"):
        animate(model, torch.zeros(1, 8, 8), SampleRequest(n=1, steps=2))
    with pytest.raises(UndiffuseError, match="guidance weight"):
        animate(model, first, SampleRequest(n=1, steps=2), guide=-1.0)
