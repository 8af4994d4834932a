"""The colour judge for prompts that name a colour."""

import torch

from undiffuse.data.emoji import CaptionedImages
from undiffuse.data.recolour import recoloured, rotate_hue
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


# --------------------------------------------------------------------------- colour captions and copies
def as_uint8(image: torch.Tensor) -> torch.Tensor:
    return ((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def test_rotate_hue_turns_colours_and_keeps_white_and_black():
    red = as_uint8(disc((0.85, 0.1, 0.15), outline=True))
    for degrees, name in ((120, "green"), (220, "blue"), (0, "red")):
        turned = rotate_hue(red, degrees)
        assert drawn_colours(turned[None].float() / 127.5 - 1) == [name]
    turned = rotate_hue(red, 180)
    assert torch.equal(turned[:, 0, 0], torch.tensor([255, 255, 255], dtype=torch.uint8))  # background
    outline = (red == 0).all(0)
    assert outline.any() and bool((turned[:, outline] == 0).all())


def test_recoloured_captions_say_the_colour_drawn():
    images = torch.stack([as_uint8(disc((0.85, 0.1, 0.15))), as_uint8(disc((0.2, 0.7, 0.25))),
                          as_uint8(disc((0.5, 0.5, 0.5))), as_uint8(disc((0.15, 0.35, 0.9)))])
    caps = [["ball"], ["leaf", "a leaf"], ["rock"], ["blue ball"]]
    data = CaptionedImages(images, caps, ["a", "b", "c", "d"])
    out = recoloured(data, copies=2, seed=3)
    assert out.captions[:4] == [["ball", "a red ball"], ["leaf", "a leaf", "a green leaf"], ["rock"], ["blue ball"]]
    assert len(out) == 4 + 2 * 2 and len(out.categories) == len(out)  # grey and already-coloured: no copies
    for image, caption in zip(out.images[4:], out.captions[4:], strict=True):
        colour = caption[0].split()[1]
        assert drawn_colours(image[None].float() / 127.5 - 1) == [colour]
        assert caption[0].endswith(("ball", "leaf"))
    assert {c[0] for c in out.captions[4:6]}.isdisjoint({"a red ball"})  # a copy shows another colour
    assert torch.equal(recoloured(data, 2, seed=3).images, out.images)   # seeded
