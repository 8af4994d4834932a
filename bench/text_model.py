"""How faithful is a text-to-emoji model to its prompt? Retrieval against the training emoji.

For ``--prompts`` emoji drawn at random (seeded), the model draws one image from the emoji's main
caption. Each generated image is compared with all training emoji (pixel L2 at the model's size):
- hit@k: the prompt's own emoji is among the k nearest training images (chance: k / N);
- caption similarity: cosine, in the text encoder's space, between the prompt and the main caption of
  the nearest training image, against the same for a random training image (the floor) and for
  the prompt's own image (1.0, the ceiling).
Colour words: for prompts "a red …", "a green …", "a yellow …", "a blue …" (those found in the model's
training captions, colour captions included, are printed and scored apart), ``--colour-seeds`` samples each;
the colour drawn is the hue of the mean colour of the non-background pixels (``undiffuse.evaluation.colour``),
and a prompt is followed when it is the colour asked for. It also draws a grid for prompts that are not emoji
names (``--free-grid``).

The retrieval pool is Twemoji at the model's size (3 786 images, as for the first shipped model), whatever else
the model trained on, so figures stay comparable across models.

    .venv/bin/python bench/text_model.py --model emoji --prompts 100
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from undiffuse.data.emoji import load_emoji
from undiffuse.data.training import load_captioned
from undiffuse.evaluation.colour import drawn_colours
from undiffuse.evaluation.nearest import nearest_neighbours
from undiffuse.images import make_grid, save_png
from undiffuse.models import load_model
from undiffuse.sampling import SampleRequest, generate

COLOURS = ("red", "green", "yellow", "blue")
OBJECTS = ("ball", "kite", "cup", "star", "hat", "fish", "flower", "balloon", "bird", "umbrella")
FREE = ["a smiling yellow face with sunglasses", "a green tree", "a red heart", "a blue car", "a slice of pizza",
        "a crying face", "a cat", "the moon at night"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="emoji-dit")
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--colour-seeds", type=int, default=4, help="samples per colour prompt (0: skip the colours)")
    ap.add_argument("--colour-grid", default="")
    ap.add_argument("--free-grid", default="docs/emoji-prompts.png")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    size = model.config.data.image_size
    data = load_emoji(size=size, channels=model.config.data.channels)
    train = data.images.float() / 127.5 - 1
    g = torch.Generator().manual_seed(0)
    chosen = torch.randperm(len(data), generator=g)[: args.prompts].tolist()
    encoder = model.text_encoder()

    t0 = time.perf_counter()
    images = []
    for j, i in enumerate(chosen):
        req = SampleRequest(n=1, seed=j, steps=args.steps, prompt=data.captions[i][0], guidance=args.guidance)
        images.append(generate(model, req, progress=False)[0][0])
    images = torch.stack(images)
    seconds = time.perf_counter() - t0
    _, idx = nearest_neighbours(images, train, k=args.k)
    own = torch.tensor(chosen)
    hit1 = float((idx[:, 0] == own).float().mean())
    hitk = float((idx == own[:, None]).any(1).float().mean())
    main_caps = [c[0] for c in data.captions]
    prompt_emb = encoder([main_caps[i] for i in chosen]).pooled
    nearest_emb = encoder([main_caps[int(i)] for i in idx[:, 0]]).pooled
    random_idx = torch.randint(len(data), (len(chosen),), generator=g)
    random_emb = encoder([main_caps[int(i)] for i in random_idx]).pooled
    sim_nearest = float((prompt_emb * nearest_emb).sum(1).mean())
    sim_random = float((prompt_emb * random_emb).sum(1).mean())
    n = len(data)
    print(f"{args.model}: {len(chosen)} prompts (training captions), guidance {args.guidance}, {args.steps} steps, "
          f"{seconds:.0f} s")
    print(f"  hit@1 {hit1:.1%} (chance {1 / n:.2%})   hit@{args.k} {hitk:.1%} (chance {args.k / n:.2%})")
    print(f"  caption similarity of the nearest training emoji {sim_nearest:.3f}; "
          f"of a random one {sim_random:.3f}; own caption 1.000")

    colour = colour_words(model, data, args) if args.colour_seeds else {}

    free = []
    for prompt in FREE:
        free.append(generate(model, SampleRequest(n=4, seed=0, steps=args.steps, prompt=prompt,
                                                  guidance=args.guidance), progress=False)[0])
    grid = make_grid(torch.stack(free).transpose(0, 1).flatten(0, 1), nrow=len(FREE))
    save_png(args.free_grid, grid, {"model": args.model, "prompts": FREE, "guidance": args.guidance,
                                    "steps": args.steps, "seeds": "0-3"}, scale=3, column_labels=None)
    print(f"  prompts that are not emoji names, one column each: {', '.join(FREE)} -> {args.free_grid}")
    if args.json:
        Path(args.json).write_text(json.dumps({"hit1": hit1, "hitk": hitk, "k": args.k, "n_train": n,
                                               "sim_nearest": sim_nearest, "sim_random": sim_random,
                                               "prompts": len(chosen), "seconds": seconds, "guidance": args.guidance,
                                               "steps": args.steps, "colour": colour}, indent=2))


def colour_words(model, data, args) -> dict:
    """The share of samples of "a <colour> <object>" whose drawn colour is the one asked for: over all the prompts,
    and over those that are in none of the model's training captions (its colour captions included)."""
    training = load_captioned(model.config.data)
    captions = {c.lower() for caps in training.captions for c in caps}
    prompts = [f"a {c} {o}" for c in COLOURS for o in OBJECTS]
    in_captions = [p for p in prompts if p.lower() in captions or p[2:].lower() in captions]
    images = []
    for p in prompts:
        images.append(generate(model, SampleRequest(n=args.colour_seeds, seed=0, steps=args.steps, prompt=p,
                                                    guidance=args.guidance), progress=False)[0])
    images = torch.stack(images)                                                   # (P, n, 3, H, W)
    drawn = {p: drawn_colours(row) for p, row in zip(prompts, images, strict=True)}
    hits = {c: [d == c for p, row in drawn.items() if p.split()[1] == c for d in row] for c in COLOURS}
    per_colour = {c: sum(h) / len(h) for c, h in hits.items()}
    followed = sum(per_colour.values()) / len(COLOURS)
    unseen = [p for p in prompts if p not in in_captions]
    unseen_per_colour = {c: [d == c for p in unseen if p.split()[1] == c for d in drawn[p]] for c in COLOURS}
    unseen_per_colour = {c: sum(h) / len(h) for c, h in unseen_per_colour.items() if h}
    followed_unseen = sum(unseen_per_colour.values()) / max(1, len(unseen_per_colour))
    print(f"  colour words followed in {followed:.1%} of {len(prompts) * args.colour_seeds} samples "
          f"({', '.join(f'{c} {v:.0%}' for c, v in per_colour.items())}); on the {len(unseen)} prompts in no "
          f"training caption {followed_unseen:.1%} ({', '.join(f'{c} {v:.0%}' for c, v in unseen_per_colour.items())})"
          f"; prompts found in captions: {in_captions or 'none'}")
    if args.colour_grid:
        save_png(args.colour_grid, make_grid(images.flatten(0, 1), nrow=len(OBJECTS) * args.colour_seeds // 2),
                 {"model": args.model, "prompts": prompts, "guidance": args.guidance, "steps": args.steps,
                  "seeds": f"0-{args.colour_seeds - 1}"}, scale=1)
    return {"followed": followed, "per_colour": per_colour, "followed_unseen": followed_unseen,
            "unseen_per_colour": unseen_per_colour, "objects": list(OBJECTS), "seeds": args.colour_seeds,
            "in_captions": in_captions, "drawn": drawn}


if __name__ == "__main__":
    main()
