"""How far bfloat16 / int8 dense weights move AlexNet's answers from float32, on real photos.

    python benchmarks/lowp_accuracy.py PHOTO_OR_FOLDER... [--variant torchvision]
        [--weights imagenet|FILE] [--flip]

For each weight dtype: the maximum relative logit error over all images,
``max|logits_lowp - logits_f32| / max|logits_f32|`` (per image, then the worst image), and the
top-1 / top-5 agreement with float32 (top-1: the same class; top-5: the same set of five).
Without ``--weights`` the model has He-normal random weights (seed 0): the errors are then
those of this network's arithmetic on these images, not of a trained classifier. ``--flip``
adds each image's mirror image. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import fastalex
from fastalex.pipeline import expand_inputs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+")
    p.add_argument("--variant", default="torchvision", choices=sorted(fastalex.specs.VARIANTS))
    p.add_argument("--weights", default=None, help="imagenet or a .npz/.pth file (default: He-init, seed 0)")
    p.add_argument("--flip", action="store_true", help="also each image mirrored")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)

    model = fastalex.alexnet(args.variant, weights=args.weights, seed=0)
    state = model.state_dict()
    paths = [item.path for item in expand_inputs(args.paths)]
    images = []
    for path in paths:
        try:
            images.append(fastalex.load_image(path, variant=args.variant))
        except fastalex.ImageError as exc:
            print(f"skipped {path}: {exc}", file=sys.stderr)
    if args.flip:
        images += [img[:, :, ::-1] for img in images]
    x = np.ascontiguousarray(np.stack(images), dtype=np.float32)

    def logits(m):
        return np.concatenate([m(x[i:i + args.batch_size]) for i in range(0, len(x), args.batch_size)])

    ref = logits(model)
    top5 = np.argsort(-ref, axis=1)[:, :5]
    weights = args.weights or "He-normal random (seed 0)"
    print(f"{args.variant} AlexNet, weights: {weights}, {len(x)} images "
          f"({len(paths)} files{', + mirrored' if args.flip else ''})")
    print(f"{'dense weights':<14} {'max rel logit err':>18} {'top-1 agree':>12} {'top-5 agree':>12}")
    for dtype in ("bfloat16", "int8"):
        low_model = fastalex.alexnet(args.variant, weights=state, weight_dtype=dtype)
        low = logits(low_model)
        rel = np.abs(low - ref).max(axis=1) / np.abs(ref).max(axis=1)
        low5 = np.argsort(-low, axis=1)[:, :5]
        top1 = np.mean(low5[:, 0] == top5[:, 0])
        same5 = np.mean([set(a) == set(b) for a, b in zip(low5, top5)])
        print(f"{dtype:<14} {rel.max():>18.2e} {top1:>11.1%} {same5:>11.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
