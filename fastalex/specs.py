"""The AlexNets as data: a spec is a dict naming the model's layers, input and preprocessing.

Two AlexNets are described here, the 2012 paper's (LRN, overlapping pooling, grouped
convolutions from the two-GPU split) and torchvision's (the one with published ImageNet
weights). Layer names follow the equivalent ``torch.nn.Sequential`` so state-dict keys
(``features.0.weight`` ... ``classifier.6.bias``) line up with torch's. A new variant is a
new spec, not new code: :func:`fastalex.build` turns any spec into a model.

A spec's ``"preprocess"`` names a preset of :mod:`fastalex.images` (mean, std, channel order,
pixel scale) and the sizes its images are resized and cropped to. This module imports nothing.
"""

from __future__ import annotations

__all__ = ["original_spec", "torchvision_spec", "VARIANTS"]


def _alexnet_aliases(pool5):
    """Short names for :meth:`Model.extract`, as Caffe names its blobs: ``fc6``/``fc7`` are the
    dense layers' outputs *after* their ReLU (Caffe's ReLUs run in place); ``fc8``/``logits``
    are the raw class scores; ``pool5`` is the last pooling (before flattening)."""
    return {"pool5": pool5, "fc6": "classifier.2", "fc7": "classifier.5",
            "fc8": "classifier.6", "logits": "classifier.6"}


def original_spec(num_classes: int = 1000) -> dict:
    """The 2012 paper's AlexNet (Krizhevsky, Sutskever & Hinton): 3x227x227 in, 60,965,224 params."""
    lrn = ("LocalResponseNorm", dict(size=5, alpha=1e-4, beta=0.75, k=2.0))
    pool = ("MaxPool2D", dict(kernel_size=3, stride=2))
    relu = ("ReLU", {})
    return {
        "variant": "original",
        "input_shape": (3, 227, 227),
        "preprocess": {"preset": "torchvision", "resize": 256, "crop": 227},
        "aliases": _alexnet_aliases(pool5="features.14"),
        "layers": [
            ("features", [
                ("Conv2D", dict(in_channels=3, out_channels=96, kernel_size=11, stride=4)), relu, lrn, pool,
                ("Conv2D", dict(in_channels=96, out_channels=256, kernel_size=5, padding=2, groups=2)), relu, lrn, pool,
                ("Conv2D", dict(in_channels=256, out_channels=384, kernel_size=3, padding=1)), relu,
                ("Conv2D", dict(in_channels=384, out_channels=384, kernel_size=3, padding=1, groups=2)), relu,
                ("Conv2D", dict(in_channels=384, out_channels=256, kernel_size=3, padding=1, groups=2)), relu,
                pool,
            ]),
            ("flatten", ("Flatten", {})),
            ("classifier", [
                ("Dropout", dict(p=0.5)), ("Dense", dict(in_features=9216, out_features=4096)), relu,
                ("Dropout", dict(p=0.5)), ("Dense", dict(in_features=4096, out_features=4096)), relu,
                ("Dense", dict(in_features=4096, out_features=num_classes)),
            ]),
        ],
    }


def torchvision_spec(num_classes: int = 1000) -> dict:
    """torchvision's ``alexnet()``: 3x224x224 in (any size >= 63), 61,100,840 params."""
    pool = ("MaxPool2D", dict(kernel_size=3, stride=2))
    relu = ("ReLU", {})
    return {
        "variant": "torchvision",
        "input_shape": (3, 224, 224),
        "preprocess": {"preset": "torchvision", "resize": 256, "crop": 224},
        "aliases": _alexnet_aliases(pool5="features.12"),
        "layers": [
            ("features", [
                ("Conv2D", dict(in_channels=3, out_channels=64, kernel_size=11, stride=4, padding=2)), relu, pool,
                ("Conv2D", dict(in_channels=64, out_channels=192, kernel_size=5, padding=2)), relu, pool,
                ("Conv2D", dict(in_channels=192, out_channels=384, kernel_size=3, padding=1)), relu,
                ("Conv2D", dict(in_channels=384, out_channels=256, kernel_size=3, padding=1)), relu,
                ("Conv2D", dict(in_channels=256, out_channels=256, kernel_size=3, padding=1)), relu,
                pool,
            ]),
            ("avgpool", ("AdaptiveAvgPool2D", dict(output_size=6))),
            ("flatten", ("Flatten", {})),
            ("classifier", [
                ("Dropout", dict(p=0.5)), ("Dense", dict(in_features=9216, out_features=4096)), relu,
                ("Dropout", dict(p=0.5)), ("Dense", dict(in_features=4096, out_features=4096)), relu,
                ("Dense", dict(in_features=4096, out_features=num_classes)),
            ]),
        ],
    }


#: variant name -> spec function taking ``num_classes``
VARIANTS = {"original": original_spec, "torchvision": torchvision_spec}
