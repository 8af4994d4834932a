"""Does a class-conditional model draw the class it was asked for? Score its samples with a classifier."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import UndiffuseError
from ..models import LoadedModel
from ..sampling import SampleRequest, generate
from .classifier import ImageClassifier


@dataclass
class Recognition:
    """How often the classifier names the requested class, overall and per class, with the confusion matrix."""

    accuracy: float
    per_class: dict[str, float]
    confusion: list[list[int]]      # confusion[asked][predicted]
    n: int
    images: Tensor = field(repr=False)
    labels: Tensor = field(repr=False)
    predicted: Tensor = field(repr=False)

    def table(self) -> str:
        """The per-class accuracies as aligned text lines."""
        width = max(map(len, self.per_class))
        lines = [f"  {name:<{width}}  {acc:6.1%}" for name, acc in self.per_class.items()]
        return "\n".join([*lines, f"  {'all':<{width}}  {self.accuracy:6.1%}  (n = {self.n})"])


def class_recognition(model: LoadedModel, classifier: ImageClassifier, req: SampleRequest,
                      progress: bool = True) -> Recognition:
    """Draw ``req.n`` samples, classes 0, 1, … in turn, and classify each (a guided model: ``req.guidance``)."""
    if not model.num_classes:
        raise UndiffuseError(f"{model.source} is unconditional: class recognition needs a class-conditional model")
    head = classifier.head[-1].out_features
    if head != model.num_classes:
        raise UndiffuseError(f"the classifier has {head} classes, the model {model.num_classes}")
    images, labels = generate(model, req, progress=progress)
    predicted = classifier.predict(images)
    k = model.num_classes
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    asked = confusion.sum(1).clamp(min=1)
    per_class = {name: float(confusion[i, i] / asked[i]) for i, name in enumerate(model.class_names)
                 if confusion[i].sum() > 0}
    return Recognition(float((predicted == labels).float().mean()), per_class, confusion.tolist(), len(labels),
                       images, labels, predicted)
