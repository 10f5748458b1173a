"""The ``fastalex`` command: it parses options and prints results; the library decides.

Every error ends as one ``fastalex: error: ...`` line on stderr and an exit code, never a
traceback: 0 success, 1 some inputs failed (or an unexpected error), 2 usage errors (bad
options, missing or unavailable weights, bad labels file), 130 interrupted, 141 stdout closed
(e.g. piped into ``head``). Library errors are printed as they are.

* :mod:`.entry`: the parser of every command and :func:`main`;
* one module per command group: :mod:`.run` (``classify``, ``embed``), :mod:`.model`
  (``summary``, ``weights``), :mod:`.speed` (``bench``, ``tune``), :mod:`.insight` (``show``,
  ``explain``, ``profile``), and ``serve`` in :mod:`fastalex.serve.command`;
* :mod:`.common`: what they share (the model of a command's options comes from
  :func:`fastalex.load_model`).
"""

from .._moved import moved
from .entry import build_parser, main

__all__ = ["main", "build_parser"]

#: moved in 0.2, when the command line became a package
__getattr__ = moved("fastalex.cli", {
    **{name: "fastalex.cli.common" for name in ("PROG", "UsageError", "bf16_note", "load_model", "model_recipe")},
    **{name: "fastalex.cli.run" for name in ("PROGRESS_MIN_IMAGES", "CLASSIFY_EPILOG", "EMBED_EPILOG",
                                            "cmd_classify", "cmd_embed")},
    **{name: "fastalex.cli.model" for name in ("cmd_summary", "cmd_weights_download", "cmd_weights_path")},
    **{name: "fastalex.cli.speed" for name in ("cmd_bench", "cmd_tune")},
    "is_onnx": "fastalex.loading"})
