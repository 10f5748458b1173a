"""Where fastalex keeps its files: one rule for the weights cache and the tuned schedules."""

from __future__ import annotations

import os
from pathlib import Path


#: the environment variables :func:`cache_home` depends on (``HOME`` through ``Path.home()``)
CACHE_HOME_VARIABLES = ("FASTALEX_HOME", "XDG_CACHE_HOME", "HOME")


def cache_home() -> Path:
    """``$FASTALEX_HOME``, else ``$XDG_CACHE_HOME/fastalex``, else ``~/.cache/fastalex``. Not
    created here."""
    home = os.environ.get("FASTALEX_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "fastalex"
    return Path.home() / ".cache" / "fastalex"
