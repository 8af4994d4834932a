"""OpenMoji: captions from annotation, tags, group and sub-group; SVGs rendered at the asked size on white;
skin-tone variants; the raster cache; broken SVGs counted, not fatal. The real package comes from setup."""

import json
import shutil
import subprocess
import time

import pytest
import torch

from undiffuse.config import Config, DataConfig
from undiffuse.data import openmoji
from undiffuse.data.images import to_float
from undiffuse.errors import UndiffuseError

REAL = openmoji.openmoji_dir()
needs_real = pytest.mark.skipif(not (REAL / "data" / "openmoji.json").is_file(),
                                reason="scripts/setup.sh fetches OpenMoji")

SQUARE = ('<svg viewBox="0 0 72 72" xmlns="http://www.w3.org/2000/svg">'
          '<rect x="18" y="18" width="36" height="36" fill="#d22f27"/></svg>')


def entry(hexcode, annotation, tags="", group="smileys-emotion", sub="heart", **more):
    return {"hexcode": hexcode, "annotation": annotation, "tags": tags, "openmoji_tags": "", "group": group,
            "subgroups": sub, "skintone": "", "skintone_base_hexcode": "", **more}


def fake_package(root, entries, svgs):
    (root / "data").mkdir(parents=True)
    (root / "color" / "svg").mkdir(parents=True)
    (root / "data" / "openmoji.json").write_text(json.dumps(entries))
    for hexcode, text in svgs.items():
        (root / "color" / "svg" / f"{hexcode}.svg").write_text(text)
    return root


def test_fake_package_captions_tones_white_and_skips(tmp_path, caplog):
    entries = [entry("2764", "red heart", "emotion, heart, love, red", openmoji_tags="love, red"),
               entry("1F44B", "waving hand", "hand, wave", "people-body", "hand-fingers-open"),
               entry("1F44B-1F3FE", "waving hand: medium-dark skin tone", "", "people-body", "hand-fingers-open",
                     skintone=4, skintone_base_hexcode="1F44B"),
               entry("BAD", "broken"), entry("GONE", "missing file")]
    root = fake_package(tmp_path / "pkg", entries, {"2764": SQUARE, "1F44B": SQUARE, "1F44B-1F3FE": SQUARE,
                                                    "BAD": "<svg nonsense"})
    data = openmoji.load_openmoji(size=16, root=root)
    assert len(data) == 3 and data.images.shape == (3, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.captions[0] == ["red heart", "red heart: love, red, emotion, heart; smileys-emotion, heart"]
    assert data.captions[2] == ["waving hand: medium-dark skin tone",
                                "waving hand, medium-dark skin tone: hand, wave; people-body, hand-fingers-open"]
    assert data.categories == ["smileys-emotion", "people-body", "people-body"]
    assert sorted(name for name, _ in data.skipped) == ["BAD.svg", "GONE.svg"]
    assert dict(data.skipped)["GONE.svg"] == "missing" and dict(data.skipped)["BAD.svg"].startswith("unreadable")
    assert "skipped 2 of 5 files" in caplog.text
    x = to_float(data.images)
    assert x.min() >= -1 and x.max() <= 1
    assert data.images[0, :, 0, 0].tolist() == [255, 255, 255]                  # transparent → white
    r, g, b = data.images[0, :, 8, 8].tolist()
    assert r > 200 and g < 60 and b < 60
    assert "CC BY-SA 4.0" in data.attribution and "OpenMoji" in openmoji.__doc__
    gray = openmoji.load_openmoji(size=16, channels=1, root=root, skin_tones=False)
    assert gray.images.shape == (2, 1, 16, 16) and len(gray.skipped) == 2


def test_missing_package_and_npm_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(UndiffuseError, match="no OpenMoji at"):
        openmoji.load_openmoji(root=tmp_path / "nowhere")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UndiffuseError, match="needs npm") as err:
        openmoji.fetch_openmoji(tmp_path / "nowhere")
    assert "\n" not in str(err.value)
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/npm")
    log = ("npm error code ECONNREFUSED\nnpm error FetchError: request to https://registry/openmoji failed, "
           "reason: connect ECONNREFUSED\nnpm error   at ClientRequest.<anonymous>\n")
    monkeypatch.setattr(openmoji.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", log))
    with pytest.raises(UndiffuseError, match=r"failed \(is the npm registry reachable\?\): FetchError: .*REFUSED$"):
        openmoji.fetch_openmoji(tmp_path / "offline")
    assert not (tmp_path / "offline").exists()
    done = fake_package(tmp_path / "done", [entry("2764", "red heart")], {"2764": SQUARE})
    assert openmoji.fetch_openmoji(done) == done                                # already there: no npm needed


def test_openmoji_data_names_are_valid():
    for name in ("openmoji", "emoji+openmoji"):
        Config(data=DataConfig(name=name, channels=3)).validate()
    with pytest.raises(UndiffuseError, match="openmoji"):
        Config(data=DataConfig(name="openmojis")).validate()


@needs_real
def test_real_openmoji_captions_images_and_heart():
    data = openmoji.load_openmoji(size=32, limit=400)
    meta = {e["annotation"]: e for e in json.loads((REAL / "data" / "openmoji.json").read_text())}
    assert len(data) == 400 and data.images.shape == (400, 3, 32, 32) and not data.skipped
    assert data.captions[0] == ["grinning face", "grinning face: smile, happy, cheerful, cheery; "
                                                 "smileys-emotion, face-smiling"]
    for caps in data.captions:
        e = meta[caps[0]]
        assert caps[1].endswith(f"; {e['group']}, {e['subgroups']}")
        for tag in (e["openmoji_tags"] or e["tags"]).split(", ")[:1]:
            assert tag in caps[1]
    x = to_float(data.images)
    assert x.min() >= -1 and x.max() <= 1 and (data.images[:, :, 0, 0] == 255).all()   # corners: white
    heart = data.images[[c[0] for c in data.captions].index("red heart")].int()        # (3, 32, 32)
    r, g, b = heart
    inked = (r < 250) | (g < 250) | (b < 250)
    red = inked & (r > 150) & (g < 100) & (b < 100)
    assert red.sum() > 0.6 * inked.sum() and inked.sum() > 200
    tones = [c for c in data.captions if "skin tone" in c[0]]
    assert "waving hand: medium skin tone" in [c[0] for c in tones] and len(tones) >= 100
    assert all("skin tone:" in c[1] and "people-body" in c[1] for c in tones)


@needs_real
def test_real_openmoji_cache_makes_the_second_load_fast(tmp_path, monkeypatch):
    root = tmp_path / "openmoji"
    (root / "data").mkdir(parents=True)
    shutil.copy(REAL / "data" / "openmoji.json", root / "data")
    (root / "color").symlink_to(REAL / "color")                                 # a fresh cache, the real SVGs
    start = time.perf_counter()
    first = openmoji.load_openmoji(size=24, root=root, limit=600)
    first_s = time.perf_counter() - start
    assert list((root / "raster").glob("24px-rgb-*.npz"))

    def refuse(*a, **k):
        raise AssertionError("the cache was not used")
    monkeypatch.setattr(openmoji, "render_svg", refuse)
    start = time.perf_counter()
    again = openmoji.load_openmoji(size=24, root=root, limit=600)
    again_s = time.perf_counter() - start
    assert torch.equal(again.images, first.images) and again.captions == first.captions
    assert again_s < first_s / 3, (first_s, again_s)
    fewer = openmoji.load_openmoji(size=24, root=root, limit=50)                # a prefix comes from the cache too
    assert torch.equal(fewer.images, first.images[:50])


@needs_real
@pytest.mark.skipif(not (openmoji.data_root() / "emoji-datasource-twitter-16.0.0" / "emoji.json").is_file(),
                    reason="scripts/setup.sh fetches the emoji")
def test_emoji_and_openmoji_together():
    both = openmoji.load_emoji_and_openmoji(size=16, limit=21)
    assert len(both) == 21 and both.captions[0][0] == "grinning face" and both.captions[11][0] == "grinning face"
    assert "Twemoji" in both.attribution and "OpenMoji" in both.attribution
