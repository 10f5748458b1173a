"""How far ``precision="bfloat16"`` moves AlexNet's logits from float32, on real photos.

    python benchmarks/bf16_accuracy.py [PHOTO_OR_FOLDER...] [--variant torchvision original]
        [--weights imagenet|FILE] [--paths amx avx512_bf16 emulation] [--flip]

Photos: the paths given, plus scikit-image's sample photos when scikit-image is installed
(``pip install scikit-image``; not a dependency of fastalex). For each variant and each bfloat16
path (default: ``tuned``, what a user gets, then every path this CPU has, see ``fastalex.bf16_paths()``), against float32 on the
same backend (numba) and weights:

* ``max rel logit diff``: ``max|logits_bf16 - logits_f32| / max|logits_f32|`` per image, the
  worst image (the issue's target: <= 1e-2);
* ``top-1 agree``: same best class; ``top-5 agree``: the same set of five classes.

Without ``--weights`` the model has He-normal random weights (seed 0): the numbers are then
those of this network's arithmetic on these photos, not of a trained classifier (whose logits
are more spread out: its top-1 agreement would be higher). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import fastalex
from fastalex.pipeline import expand_inputs

#: scikit-image's sample images that are photographs (not drawings, text or test patterns)
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "camera.png",
                  "coins.png", "moon.png", "grass.png", "gravel.png", "brick.png", "ihc.png",
                  "horse.png", "cell.png")


def skimage_photos() -> list[str]:
    try:
        import skimage.data
    except ImportError:
        return []
    root = skimage.data.data_dir
    return [os.path.join(root, n) for n in SKIMAGE_PHOTOS if os.path.exists(os.path.join(root, n))]


def compare(variant, weights, paths, files, flip, batch_size):
    model = fastalex.alexnet(variant, weights=weights, seed=0, backend="numba")
    images, used = [], []
    for path in files:
        try:
            images.append(fastalex.load_image(path, variant=variant))
            used.append(path)
        except fastalex.ImageError as exc:
            print(f"skipped {path}: {exc}", file=sys.stderr)
    if flip:
        images += [img[:, :, ::-1] for img in images]
    x = np.ascontiguousarray(np.stack(images), dtype=np.float32)

    def logits(m):
        return np.concatenate([m(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])

    ref = logits(model)
    top5 = np.argsort(-ref, axis=1)[:, :5]
    rows = []
    model.set_precision("bfloat16")
    for path in paths:
        fastalex.set_bf16_path(None if path == "tuned" else path)
        low = logits(model)
        rel = np.abs(low - ref).max(axis=1) / np.abs(ref).max(axis=1)
        low5 = np.argsort(-low, axis=1)[:, :5]
        rows.append((path, float(rel.max()), float(np.median(rel)), float(np.mean(low5[:, 0] == top5[:, 0])),
                     float(np.mean([set(a) == set(b) for a, b in zip(low5, top5)]))))
    fastalex.set_bf16_path(None)
    return len(x), len(used), rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="*", help="photos or folders (besides scikit-image's)")
    p.add_argument("--variant", nargs="+", default=["torchvision", "original"],
                   choices=sorted(fastalex.specs.VARIANTS))
    p.add_argument("--weights", default=None, help="imagenet or a .npz/.pth file (default: He-init, seed 0)")
    p.add_argument("--paths", nargs="+", default=None,
                   help="bfloat16 paths, or 'tuned' (no path set: each layer's product chosen by measurement, "
                        "what a user gets); default: tuned, then every path this CPU has")
    p.add_argument("--flip", action="store_true", help="also each image mirrored")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)
    fastalex.configure_threads()
    files = [item.path for item in expand_inputs(args.inputs)] if args.inputs else []
    files += skimage_photos()
    if not files:
        p.error("no photos: give some, or pip install scikit-image for its sample photos")
    paths = args.paths or ["tuned", *fastalex.bf16_paths()]
    weights = args.weights or "He-normal random (seed 0)"
    print(f"bfloat16 vs float32 logits; weights: {weights}; CPU paths: {', '.join(fastalex.bf16_paths())}")
    print(f"{'variant':<12} {'path':<12} {'images':>6} {'max rel logit diff':>19} {'median':>9} "
          f"{'top-1 agree':>12} {'top-5 agree':>12}")
    for variant in args.variant:
        n, _, rows = compare(variant, args.weights, paths, files, args.flip, args.batch_size)
        for path, worst, median, top1, top5 in rows:
            print(f"{variant:<12} {path:<12} {n:>6} {worst:>19.2e} {median:>9.2e} {top1:>11.1%} {top5:>11.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
