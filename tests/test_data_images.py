"""Image data: the ImageData container, the IDX parser, Fashion-MNIST, image folders and digits."""

import gzip
import logging
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from undiffuse.data import fashion_mnist as fm
from undiffuse.data.folder import load_image_folder, to_rgb_or_gray
from undiffuse.data.images import ImageData, pad_images, resize_images, to_float, to_uint8
from undiffuse.errors import UndiffuseError

HAS_FASHION_MNIST = (fm.fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").is_file()


def write_idx(path, array, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(fm.IDX_DTYPES[type_code]).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def fake_fashion_mnist(folder, n=5):
    """The four Fashion-MNIST files for a test split of n images (the loader checks the count)."""
    rng = np.random.default_rng(0)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.arange(n) % 10)


# --- ImageData and transforms ---------------------------------------------------------------------

def make_data(n=8, c=3, s=6):
    images = torch.arange(n * c * s * s).reshape(n, c, s, s).remainder(256).to(torch.uint8)
    return ImageData(images, torch.arange(n) % 2, ["a", "b"])


def test_image_data_basics_and_range():
    data = make_data()
    assert (len(data), data.channels, data.size, data.num_classes) == (8, 3, 6, 2)
    x = data.batch([0, 3])
    assert x.dtype == torch.float32 and x.shape == (2, 3, 6, 6)
    assert to_float(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]
    assert torch.equal(to_uint8(x), data.images[[0, 3]])  # exact round trip
    assert len(data.subset(slice(0, 3))) == 3


def test_image_data_validates():
    with pytest.raises(UndiffuseError, match="uint8"):
        ImageData(torch.zeros(2, 1, 4, 4), torch.zeros(2), ["a"])
    with pytest.raises(UndiffuseError, match="class name"):
        ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), ["a"])
    ImageData(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([-1, -1]), [])  # unlabeled is fine


def test_flip_is_seeded_and_per_image():
    data = make_data(n=64)
    a = data.batch(slice(None), flip=True, generator=torch.Generator().manual_seed(3))
    b = data.batch(slice(None), flip=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    plain = data.batch(slice(None))
    flipped = torch.tensor([torch.equal(a[i], plain[i].flip(-1)) for i in range(64)])
    kept = torch.tensor([torch.equal(a[i], plain[i]) for i in range(64)])
    assert (flipped | kept).all() and 10 < flipped.sum() < 54  # each image either mirrored or not, about half


def test_pad_and_resize():
    x = torch.full((2, 1, 28, 28), 200, dtype=torch.uint8)
    padded = pad_images(x, 32)
    assert padded.shape == (2, 1, 32, 32) and padded[0, 0, :2].eq(0).all() and padded[0, 0, 2:30, 2:30].eq(200).all()
    assert resize_images(x, 14).eq(200).all()  # a constant image stays constant
    with pytest.raises(UndiffuseError):
        pad_images(x, 16)


# --- IDX and Fashion-MNIST ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a.idx.gz", "a.idx"])
def test_read_idx_round_trip(tmp_path, name):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, array)
    out = fm.read_idx(tmp_path / name)
    assert out.dtype == np.uint8 and np.array_equal(out, array)
    write_idx(tmp_path / name, np.array([-5, 70000]), type_code=0x0C)  # big-endian int32
    assert fm.read_idx(tmp_path / name).tolist() == [-5, 70000]


def test_read_idx_rejects_bad_files(tmp_path):
    bad_magic = tmp_path / "magic.gz"
    bad_magic.write_bytes(gzip.compress(b"\x01\x02\x08\x01\x00\x00\x00\x01\x07"))
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x00" * 3))
    not_gzip = tmp_path / "junk.gz"
    not_gzip.write_bytes(b"not gzip at all")
    cases = [(bad_magic, "magic"), (cut, "implies"), (not_gzip, "corrupt"), (tmp_path / "none.gz", "missing")]
    for path, match in cases:
        with pytest.raises(UndiffuseError, match=match) as err:
            fm.read_idx(path)
        assert path.name in str(err.value) and "\n" not in str(err.value)


def test_fashion_mnist_from_a_folder_and_env(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "FILES", {"test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 5)})
    fake_fashion_mnist(tmp_path)
    data = fm.load_fashion_mnist("test", data_dir=tmp_path)
    assert data.images.shape == (5, 1, 32, 32) and data.labels.tolist() == [0, 1, 2, 3, 4]
    assert data.images[:, :, :2].eq(0).all()  # padded with the background
    monkeypatch.setenv(fm.ENV_VAR, str(tmp_path))
    assert fm.load_fashion_mnist("test", size=16).images.shape == (5, 1, 16, 16)  # resized
    assert fm.load_fashion_mnist("test", size=28).images.shape == (5, 1, 28, 28)


def test_fashion_mnist_missing_names_the_package(tmp_path):
    with pytest.raises(UndiffuseError, match="apt-get install dataset-fashion-mnist") as err:
        fm.load_fashion_mnist("train", data_dir=tmp_path)
    assert "train-images-idx3-ubyte.gz" in str(err.value)
    with pytest.raises(UndiffuseError, match="split"):
        fm.load_fashion_mnist("valid", data_dir=tmp_path)


@pytest.mark.skipif(not HAS_FASHION_MNIST, reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_test_split():
    data = fm.load_fashion_mnist("test")
    assert data.images.shape == (10_000, 1, 32, 32) and data.images.dtype == torch.uint8
    assert data.labels.bincount().tolist() == [1000] * 10
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert data.labels[:5].tolist() == [9, 2, 1, 1, 6]  # the well-known first test labels


# --- image folders --------------------------------------------------------------------------------

def rgb(color=(200, 30, 30), size=(40, 30)):
    return Image.new("RGB", size, color)


@pytest.fixture
def folder(tmp_path):
    """cats/ and dogs/ with every awkward kind of input, plus one bad file of each kind."""
    cats, dogs = tmp_path / "cats", tmp_path / "dogs" / "puppies"
    cats.mkdir()
    dogs.mkdir(parents=True)
    rgb().save(cats / "a.png")
    rgb().save(cats / "b.jpg", quality=95)
    rgb().save(cats / "c.webp")
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(cats / "transparent.png")  # -> white
    Image.new("LA", (20, 20), (0, 0)).save(dogs / "gray_alpha.png")  # -> white
    rgb().convert("P", palette=Image.Palette.ADAPTIVE).save(dogs / "palette.png")
    Image.fromarray(np.full((16, 16), 65535, np.uint16)).save(dogs / "sixteen.png")  # 16-bit -> 255
    Image.new("L", (50, 50), 80).save(dogs / "gray.png")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(dogs / "cmyk.jpg")
    (tmp_path / "dogs" / "empty.png").write_bytes(b"")
    (tmp_path / "dogs" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    jpeg = tmp_path / "cats" / "truncated.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg)
    jpeg.write_bytes(jpeg.read_bytes()[:700])
    (tmp_path / "cats" / "notes.txt").write_text("not an image, ignored")
    return tmp_path


def test_folder_classes_modes_and_skips(folder, caplog):
    with caplog.at_level(logging.WARNING):
        data = load_image_folder(folder, size=8)
    assert data.class_names == ["cats", "dogs"]
    assert data.images.shape == (9, 3, 8, 8) and data.labels.tolist() == [0] * 4 + [1] * 5
    assert data.summary.startswith("skipped 3 of 12 files: ")
    for part in ["cats/truncated.jpg (truncated)", "dogs/empty.png (empty)", "dogs/corrupt.png ("]:
        assert part in data.summary
    assert data.summary in caplog.text and "\n" not in data.summary
    # files are read in sorted order: cats a, b, c, transparent; dogs cmyk, gray, puppies/gray_alpha, palette, sixteen
    assert data.images[3].eq(255).all() and data.images[6].eq(255).all()  # transparency flattened onto white
    assert data.images[8].eq(255).all()  # 16-bit full scale
    assert data.images[5].eq(80).all()  # gray -> RGB keeps the value
    assert abs(int(data.images[0, 0, 0, 0]) - 200) <= 2 and abs(int(data.images[7, 0, 0, 0]) - 200) <= 8


def test_folder_gray_and_unlabeled(tmp_path):
    for i in range(3):
        Image.new("RGB", (10 + i, 20), (90, 90, 90)).save(tmp_path / f"{i}.png")
    data = load_image_folder(tmp_path, size=4, channels=1)
    assert data.images.shape == (3, 1, 4, 4) and data.labels.tolist() == [-1] * 3 and data.num_classes == 0
    assert data.summary == "" and data.skipped == []


def test_folder_centre_crop(tmp_path):
    im = Image.new("RGB", (30, 10), (0, 0, 255))
    im.paste((255, 0, 0), (10, 0, 20, 10))  # red square in the middle of a wide blue strip
    im.save(tmp_path / "wide.png")
    assert load_image_folder(tmp_path, size=5).images[0, 0].eq(255).all()


def test_folder_too_large_is_skipped(tmp_path):
    rgb(size=(100, 100)).save(tmp_path / "big.png")
    rgb().save(tmp_path / "ok.png")
    data = load_image_folder(tmp_path, size=8, max_pixels=5000)
    assert len(data) == 1 and "big.png (too large" in data.summary


def test_folder_decompression_bomb_is_skipped(tmp_path):
    """A PNG header that claims 20 000 × 20 000 pixels: skipped before any pixel is decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 20_000, 20_000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    (tmp_path / "bomb.png").write_bytes(png)
    rgb().save(tmp_path / "ok.png")
    data = load_image_folder(tmp_path, size=8)
    assert len(data) == 1 and "bomb.png (too large" in data.summary


def test_folder_errors(tmp_path):
    with pytest.raises(UndiffuseError, match="no image files"):
        load_image_folder(tmp_path, size=8)
    with pytest.raises(UndiffuseError, match="not a folder"):
        load_image_folder(tmp_path / "nowhere", size=8)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UndiffuseError, match=r"no readable images .*empty\.png \(empty\)"):
        load_image_folder(tmp_path, size=8)


def test_to_rgb_or_gray_float_mode():
    im = Image.fromarray(np.full((4, 4), 0.5, np.float32), "F")
    assert np.asarray(to_rgb_or_gray(im, 1)).tolist()[0][0] == 128


# --- digits ---------------------------------------------------------------------------------------

def test_digits():
    pytest.importorskip("sklearn")
    from undiffuse.data.digits import load_digits_data

    data = load_digits_data()
    assert data.images.shape == (1797, 1, 8, 8) and data.images.max() == 255 and data.images.min() == 0
    assert data.num_classes == 10 and data.labels[:10].tolist() == list(range(10))
    assert load_digits_data(size=16).images.shape == (1797, 1, 16, 16)
