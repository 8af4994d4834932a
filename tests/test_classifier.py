"""The Fashion-MNIST classifier: shipped weights, accuracy, and loading errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from undiffuse.data import fashion_mnist as fm
from undiffuse.data.images import to_float, to_uint8
from undiffuse.evaluation.classifier import ImageClassifier, features, load_classifier, predict
from undiffuse.errors import UndiffuseError

HAS_FASHION_MNIST = (fm.fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").is_file()
SMALL = {"in_channels": 1, "num_classes": 3, "image_size": 8, "channels": [4, 8], "feature_dim": 6}


def save_model(folder, model, args):
    folder.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"args": args}))


def test_round_trip_through_safetensors(tmp_path):
    torch.manual_seed(0)
    model = ImageClassifier(**SMALL).eval()
    save_model(tmp_path / "m", model, SMALL)
    loaded = load_classifier(tmp_path / "m")
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    assert torch.equal(loaded(x), model(x))
    assert predict(loaded, x).shape == (5,) and predict(loaded, x).dtype == torch.long
    assert features(loaded, x, batch_size=2).shape == (5, 6)
    u = to_uint8(x)  # uint8 pixels are accepted as 0–255
    assert torch.equal(loaded.features(u), loaded.features(to_float(u)))


def test_loading_errors_name_the_tensor(tmp_path):
    model = ImageClassifier(**SMALL)
    save_model(tmp_path / "m", model, SMALL)
    weights = tmp_path / "m" / "model.safetensors"
    tensors = load_file(weights)

    tensors["hidden.1.weight"] = torch.zeros(6, 7)
    save_file(tensors, weights)
    with pytest.raises(UndiffuseError, match=r"tensor 'hidden.1.weight' .* shape \(6, 7\), the model expects") as err:
        load_classifier(tmp_path / "m")
    assert "\n" not in str(err.value)

    del tensors["hidden.1.weight"]
    save_file(tensors, weights)
    with pytest.raises(UndiffuseError, match="lacks tensor 'hidden.1.weight'"):
        load_classifier(weights)  # the file's path works too

    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(UndiffuseError, match="corrupt weights file") as err:
        load_classifier(tmp_path / "m")
    assert "\n" not in str(err.value)

    with pytest.raises(UndiffuseError, match="no classifier"):
        load_classifier("no-such-classifier")


def test_wrong_input_shape():
    model = ImageClassifier(**SMALL)
    with pytest.raises(UndiffuseError, match=r"\(N, 1, 8, 8\)"):
        model.predict(torch.zeros(2, 3, 8, 8))


def test_shipped_classifier_config():
    model = load_classifier()
    assert model.config["class_names"][0] == "T-shirt/top" and len(model.config["class_names"]) == 10
    assert model.config["test_accuracy"] >= 0.90 and not model.training
    assert model.features(torch.zeros(2, 1, 32, 32)).shape == (2, model.config["args"]["feature_dim"])


@pytest.mark.skipif(not HAS_FASHION_MNIST, reason="apt-get install dataset-fashion-mnist")
def test_shipped_classifier_accuracy():
    test = fm.load_fashion_mnist("test", limit=2000)
    accuracy = (load_classifier().predict(test.batch(slice(None))) == test.labels).float().mean().item()
    assert accuracy >= 0.90
