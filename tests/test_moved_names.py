"""Public names that moved in phase 2 of issue 20 still import from their old module, for one
release, with a DeprecationWarning naming the new place (fastalex/_moved.py)."""

from __future__ import annotations

import importlib

import pytest

#: (old module, name, new module)
MOVED = [
    ("fastalex.models", "VARIANTS", "fastalex.specs"),
    ("fastalex.models", "original_spec", "fastalex.specs"),
    ("fastalex.models", "torchvision_spec", "fastalex.specs"),
    ("fastalex.models", "IMAGENET_MEAN", "fastalex.images"),
    ("fastalex.models", "IMAGENET_STD", "fastalex.images"),
    ("fastalex.weights", "cache_dir", "fastalex.hub"),
    ("fastalex.weights", "PublishedWeights", "fastalex.hub"),
    ("fastalex.weights", "IMAGENET1K_V1", "fastalex.hub"),
    ("fastalex.weights", "PUBLISHED", "fastalex.hub"),
    ("fastalex.weights", "published_weights", "fastalex.hub"),
    ("fastalex.weights", "download_imagenet", "fastalex.hub"),
    ("fastalex.weights", "resolve_weights", "fastalex.hub"),
    ("fastalex.weights", "IMAGENET_URL", "fastalex.hub"),
    ("fastalex.weights", "HASH_REGEX", "fastalex.hub"),
    ("fastalex.distributed", "fetch_weights", "fastalex.hub"),
    ("fastalex.classify", "read_url", "fastalex.pipeline"),
    ("fastalex.classify", "as_items", "fastalex.pipeline"),
    ("fastalex.classify", "is_url", "fastalex._files"),
    ("fastalex.cli", "UsageError", "fastalex.cli.common"),
    ("fastalex.cli", "load_model", "fastalex.cli.common"),
    ("fastalex.cli", "cmd_classify", "fastalex.cli.run"),
    ("fastalex.cli", "cmd_summary", "fastalex.cli.model"),
    ("fastalex.cli", "cmd_bench", "fastalex.cli.speed"),
    ("fastalex.cli", "is_onnx", "fastalex.loading"),
]


@pytest.mark.parametrize("old, name, new", MOVED)
def test_a_moved_name_still_imports_from_its_old_module_with_a_warning(old, name, new):
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to {new}\.{name}"):
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), name)


def test_from_import_of_a_moved_name_warns_too():
    with pytest.warns(DeprecationWarning, match="fastalex.hub"):
        from fastalex.weights import IMAGENET1K_V1
    import fastalex
    assert IMAGENET1K_V1 is fastalex.IMAGENET1K_V1


def test_the_classify_module_is_reached_although_fastalex_classify_is_the_function():
    import sys
    with pytest.warns(DeprecationWarning, match="fastalex.pipeline"):
        sys.modules["fastalex.classify"].read_url  # noqa: B018


def test_the_command_line_entry_points_did_not_move():
    import warnings

    import fastalex.cli
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from fastalex.cli import build_parser, main
    assert main is fastalex.cli.entry.main and build_parser is fastalex.cli.entry.build_parser


def test_a_name_that_never_existed_is_still_an_attribute_error():
    import fastalex.weights
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        fastalex.weights.nothing_here  # noqa: B018
