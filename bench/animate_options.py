"""Image-to-video options on a video model: RePaint rounds (``resample``) and reconstruction guidance (``guide``).

For each ``resample:guide`` pair, ``evaluate_animate`` animates the first frames of N real test clips of the
moving-sprites generator (seeds and clips fixed, so every pair sees the same frames) and reports the tracked
centre's move from the given frame to the next (the real clips' beside it), the frames the sprite judge recognises
as the given garment, the per-axis speed change (the physics error) and the time relative to the first pair.

    .venv/bin/python bench/animate_options.py --json bench/results/animate-options.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from undiffuse.evaluation.video import evaluate_animate
from undiffuse.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="moving-sprites")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--pairs", default="0:0,1:0,2:0,0:5,0:20,1:5,2:5", help="resample:guide pairs, comma-separated")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model = load_model(args.model)
    rows, first_seconds = [], None
    print(f"### Image-to-video options ({args.model}, n = {args.n}, {time.strftime('%Y-%m-%d %H:%M')} UTC)\n")
    print("| resample / guide | move to frame 2 (px) | real | frames recognised | speed change | time |")
    print("|---|---|---|---|---|---|")
    for pair in args.pairs.split(","):
        resample, guide = pair.split(":")
        t = time.perf_counter()
        e = evaluate_animate(model, n=args.n, resample=int(resample), guide=float(guide), progress=False)
        seconds = time.perf_counter() - t
        first_seconds = first_seconds or seconds
        row = {"resample": int(resample), "guide": float(guide), "first_step": e.first_step,
               "real_first_step": e.real_first_step, **e.generated.to_dict(), "seconds": seconds}
        rows.append(row)
        accuracy = "–" if e.generated.frame_accuracy is None else f"{e.generated.frame_accuracy:.1%}"
        print(f"| {resample} / {guide} | {e.first_step:.2f} | {e.real_first_step:.2f} | {accuracy} | "
              f"{e.generated.motion_error:.2f} | {seconds / first_seconds:.1f}× |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "n": args.n, "date": time.strftime("%Y-%m-%d %H:%M"),
                                         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
