"""The colour judge for prompts that name a colour."""

import torch

from undiffuse.evaluation.colour import drawn_colours, mean_foreground_colour


def disc(rgb: tuple[float, float, float], size: int = 32, outline: bool = False) -> torch.Tensor:
    """A filled disc of colour ``rgb`` (0-1) on white, optionally with a black outline, in [-1, 1]."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2).sqrt()
    img = torch.ones(3, size, size)
    inside = r < size / 3
    img[:, inside] = torch.tensor(rgb)[:, None]
    if outline:
        img[:, (r >= size / 3) & (r < size / 3 + 1.5)] = 0
    return img * 2 - 1


def test_colours_of_discs_on_white_with_and_without_outlines():
    cases = {"red": (0.85, 0.1, 0.15), "green": (0.2, 0.7, 0.25), "yellow": (1.0, 0.85, 0.2),
             "blue": (0.15, 0.35, 0.9), "purple": (0.6, 0.25, 0.75),
             "yellow (a Twemoji star, yellow-orange)": (1.0, 0.67, 0.2)}
    for outline in (False, True):
        images = torch.stack([disc(c, outline=outline) for c in cases.values()])
        assert drawn_colours(images) == [name.split(" ")[0] for name in cases]


def test_background_is_ignored_and_grey_or_empty_is_none():
    small = torch.ones(3, 32, 32)
    small[:, 14:18, 14:18] = torch.tensor([0.1, 0.2, 0.9])[:, None, None]     # a tiny blue square
    assert drawn_colours((small * 2 - 1)[None]) == ["blue"]
    assert drawn_colours(torch.stack([disc((0.5, 0.5, 0.5)), torch.ones(3, 32, 32)])) == ["none", "none"]
    assert torch.allclose(mean_foreground_colour(torch.ones(1, 3, 8, 8)), torch.ones(1, 3))
