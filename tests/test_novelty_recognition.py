"""Nearest training images, the novelty ratio, the figure, and class recognition of generated samples."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from undiffuse.errors import UndiffuseError
from undiffuse.evaluation.classifier import ImageClassifier
from undiffuse.evaluation.nearest import nearest_neighbours, novelty
from undiffuse.evaluation.recognition import class_recognition
from undiffuse.images import read_params
from undiffuse.models import load_model
from undiffuse.plots import plot_nearest
from undiffuse.sampling import SampleRequest

ROOT = Path(__file__).resolve().parents[1]


def test_nearest_neighbours_match_brute_force():
    g = torch.Generator().manual_seed(0)
    ref, queries = torch.randn(300, 1, 4, 4, generator=g), torch.randn(50, 1, 4, 4, generator=g)
    dist, idx = nearest_neighbours(queries, ref, k=3, chunk=7)
    brute = torch.cdist(queries.flatten(1).double(), ref.flatten(1).double())
    d_ref, i_ref = brute.topk(3, dim=1, largest=False)
    assert torch.equal(idx, i_ref)
    assert torch.allclose(dist.double(), d_ref, atol=1e-4)
    with pytest.raises(ValueError, match="differ in shape"):
        nearest_neighbours(queries[:, :, :2], ref)


def test_novelty_tells_copies_from_new_draws():
    g = torch.Generator().manual_seed(1)
    train, test = torch.randn(2000, 8, generator=g), torch.randn(200, 8, generator=g)
    fresh = torch.randn(200, 8, generator=g)                                   # new draws: like test images
    copies = train[:200] + 0.01 * torch.randn(200, 8, generator=g)            # memorised training items
    assert 0.85 < novelty(fresh, train, test).ratio < 1.15
    copied = novelty(copies, train, test)
    assert copied.ratio < 0.05 and "ratio" in copied.summary()


def test_plot_nearest_writes_a_png_with_its_parameters(tmp_path):
    samples = torch.rand(4, 1, 8, 8) * 2 - 1
    neighbours, dist = torch.rand(4, 3, 1, 8, 8) * 2 - 1, torch.rand(4, 3)
    path = plot_nearest(samples, neighbours, dist, [f"s{i}" for i in range(4)], tmp_path / "nn.png",
                        {"model": "test"}, test_median=1.5)
    with Image.open(path) as im:
        assert im.width > 300 and im.height > 100
    assert read_params(path) == {"model": "test"}


def test_class_recognition_counts_every_sample(digits_run):
    model = load_model(digits_run)
    size = model.config.data.image_size
    classifier = ImageClassifier(num_classes=model.num_classes, image_size=size, channels=(8,), feature_dim=16)
    rec = class_recognition(model, classifier, SampleRequest(n=30, steps=3), progress=False)
    confusion = torch.tensor(rec.confusion)
    assert confusion.sum() == 30 and confusion.sum(1).tolist() == [3] * 10   # classes 0…9 in turn
    assert rec.accuracy == pytest.approx(float(confusion.trace()) / 30)
    assert torch.equal(rec.predicted, classifier.predict(rec.images))
    assert len(rec.per_class) == 10 and "all" in rec.table()
    small = ImageClassifier(num_classes=3, image_size=size, channels=(8,), feature_dim=16)
    with pytest.raises(UndiffuseError, match="the classifier has 3 classes, the model 10"):
        class_recognition(model, small, SampleRequest(n=10, steps=2), progress=False)
