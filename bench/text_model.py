"""How faithful is a text-to-emoji model to its prompt? Retrieval against the training emoji.

For ``--prompts`` emoji drawn at random (seeded), the model draws one image from the emoji's main
caption. Each generated image is compared with all training emoji (pixel L2 at the model's size):
- hit@k: the prompt's own emoji is among the k nearest training images (chance: k / N);
- caption similarity: cosine, in the text encoder's space, between the prompt and the main caption of
  the nearest training image, against the same for a random training image (the floor) and for
  the prompt's own image (1.0, the ceiling).
It also draws a grid for prompts that are not emoji names (``--free``).

    .venv/bin/python bench/text_model.py --model emoji --prompts 100
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from undiffuse.data.emoji import load_emoji
from undiffuse.evaluation.nearest import nearest_neighbours
from undiffuse.images import make_grid, save_png
from undiffuse.models import load_model
from undiffuse.sampling import SampleRequest, generate

FREE = ["a smiling yellow face with sunglasses", "a green tree", "a red heart", "a blue car", "a slice of pizza",
        "a crying face", "a cat", "the moon at night"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="emoji")
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
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
                                               "prompts": len(chosen), "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
