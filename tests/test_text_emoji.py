"""The frozen sentence encoder (dimension, mask, meaning, agreement with sentence-transformers, cache)
and the captioned emoji data (captions with skin tones, white background, skipped files named)."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from undiffuse.data import emoji
from undiffuse.errors import UndiffuseError
from undiffuse.text import TextEncoder, cached_embeddings


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder(max_length=16)


def test_text_embedding_shapes_and_mask(encoder):
    e = encoder(["a red heart", "a smiling yellow face with sunglasses", ""])
    assert e.tokens.shape == (3, 16, 384) and e.pooled.shape == (3, 384) and e.mask.dtype == torch.bool
    assert e.mask.sum(1).tolist() == [5, 8, 2]            # [CLS] words [SEP]; the rest is padding
    torch.testing.assert_close(e.pooled.norm(dim=1), torch.ones(3))


def test_related_prompts_are_closer(encoder):
    e = encoder(["a red heart", "a red love heart", "a green tree", "a pine tree in the forest"])
    sim = e.pooled @ e.pooled.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[2, 3] > sim[2, 1] + 0.2


def test_pooled_embedding_matches_sentence_transformers(encoder):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from undiffuse.text.encoder import model_dir
    reference = sentence_transformers.SentenceTransformer(str(model_dir()), device="cpu", local_files_only=True)
    prompts = ["a red heart", "grinning face with big eyes", "ankle boot"]
    ours = encoder(prompts).pooled
    theirs = torch.from_numpy(reference.encode(prompts, normalize_embeddings=True))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_caption_cache_is_reused_and_refreshed(encoder, tmp_path, monkeypatch):
    caps = ["red heart", "heart", "red heart", "tree"]
    first = cached_embeddings(encoder, caps, tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1 and torch.equal(first.pooled[0], first.pooled[2])

    def refuse(*a, **k):
        raise AssertionError("the cache was not used")
    monkeypatch.setattr(type(encoder), "__call__", refuse)
    again = cached_embeddings(encoder, caps, tmp_path, progress=False)
    assert torch.equal(again.tokens, first.tokens) and torch.equal(again.mask, first.mask)
    with pytest.raises(AssertionError, match="not used"):      # other captions: a new file is computed
        cached_embeddings(encoder, ["something else"], tmp_path, progress=False)


def fake_package(root, entries, images):
    (root / "img" / "twitter" / "64").mkdir(parents=True)
    (root / "emoji.json").write_text(json.dumps(entries))
    for name, im in images.items():
        path = root / "img" / "twitter" / "64" / name
        if isinstance(im, bytes):
            path.write_bytes(im)
        else:
            im.save(path)


def test_emoji_captions_tones_alpha_and_skips(tmp_path):
    heart = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    heart.paste((220, 20, 60, 255), (16, 16, 48, 48))
    entries = [
        {"name": "RED HEART", "short_names": ["heart"], "category": "Smileys & Emotion", "subcategory": "heart",
         "image": "2764.png", "has_img_twitter": True, "sort_order": 1},
        {"name": "WAVING HAND SIGN", "short_names": ["wave"], "category": "People & Body",
         "subcategory": "hand-fingers-open", "image": "1f44b.png", "has_img_twitter": True, "sort_order": 2,
         "skin_variations": {"1F3FE": {"image": "1f44b-1f3fe.png", "has_img_twitter": True}}},
        {"name": "BROKEN", "short_names": [], "category": "Symbols", "image": "bad.png", "has_img_twitter": True,
         "sort_order": 3},
    ]
    fake_package(tmp_path, entries, {"2764.png": heart, "1f44b.png": heart, "1f44b-1f3fe.png": heart,
                                     "bad.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 30})
    data = emoji.load_emoji(size=16, root=tmp_path)
    assert data.images.shape == (3, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.captions[0] == ["red heart", "heart", "red heart, a smileys & emotion emoji: heart"]
    assert data.captions[2][0] == "waving hand sign: medium-dark skin tone"
    assert data.skipped == [("bad.png", data.skipped[0][1])] and data.skipped[0][1] != ""
    corner, centre = data.images[0, :, 0, 0].tolist(), data.images[0, :, 8, 8].tolist()
    assert corner == [255, 255, 255] and centre[0] > 200 and centre[1] < 60   # transparent → white
    with pytest.raises(UndiffuseError, match="no emoji at"):
        emoji.load_emoji(root=tmp_path / "nowhere")


@pytest.mark.skipif(not (emoji.emoji_dir() / "emoji.json").is_file(), reason="scripts/setup.sh fetches the emoji")
def test_real_twemoji():
    data = emoji.load_emoji(size=32, limit=400)
    assert len(data) == 400 and data.images.shape[1:] == (3, 32, 32) and not data.skipped
    assert data.captions[0][0] == "grinning face"
    assert any("skin tone" in c[0] for c in data.captions)


def test_tuxpaint_stamps_captions_fit_and_skips(tmp_path):
    from undiffuse.data import tuxpaint
    (tmp_path / "animals" / "mammals").mkdir(parents=True)
    wide = Image.new("RGBA", (80, 20), (0, 0, 0, 0))
    wide.paste((200, 0, 0, 255), (0, 0, 80, 20))                    # a wide red bar: must not be cropped
    wide.save(tmp_path / "animals" / "mammals" / "kangaroo.png")
    (tmp_path / "animals" / "mammals" / "kangaroo.txt").write_text("A red kangaroo.\nde.utf8=Ein Känguru.\n")
    wide.save(tmp_path / "animals" / "thumb.png")                     # no caption: not a stamp
    (tmp_path / "animals" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "animals" / "broken.txt").write_text("A broken stamp.\n")
    (tmp_path / "animals" / "vector.svg").write_text("<svg/>")
    data = tuxpaint.load_tuxpaint(size=16, root=tmp_path)
    assert len(data) == 1 and data.captions[0] == ["a red kangaroo", "a red kangaroo, animals mammals"]
    img = data.images[0]
    assert img[:, 0, 0].tolist() == [255, 255, 255] and img[:, 8, 0].tolist()[0] > 150   # whole bar, on white
    assert ("1 SVG stamps", "not rasterised") in data.skipped
    assert any(name.endswith("broken.png") for name, _ in data.skipped)


@pytest.mark.skipif(not Path("/usr/share/tuxpaint/stamps").is_dir(), reason="scripts/setup.sh installs the stamps")
def test_real_tuxpaint_stamps():
    from undiffuse.data import tuxpaint
    data = tuxpaint.load_tuxpaint(size=32, limit=50)
    assert len(data) == 50 and data.images.shape[1:] == (3, 32, 32)
    assert all(c[0] and not c[0].endswith(".") for c in data.captions)
