"""Where weights come from: the published weights, URLs, and the cache that keeps them.

* :class:`PublishedWeights` / :data:`IMAGENET1K_V1` (and :func:`download_imagenet`):
  torchvision's published AlexNet weights and their facts (url, hash, variant, classes,
  preprocessing), downloaded once, verified, converted to ``.npz`` and cached in
  :func:`cache_dir` with a digest that is checked on every use.
* :func:`fetch_weights`: a weights file at a URL (``https://``, ``s3://``, ...), fetched once
  into the cache.
* :func:`resolve_weights`: what ``alexnet(weights=...)`` accepts, turned into a state dict.

Reading and writing the files themselves is :mod:`fastalex.weights`'; every download goes
through :func:`fastalex._files.open_bounded` (a size cap and a deadline).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _files
from ._files import FileProblem, atomic_write
from ._home import cache_home
from .errors import CachedWeightsError, WeightsFileError, WeightsMismatchError, WeightsUnavailableError
from .images import get_preprocess
from .labels import imagenet_labels
from .weights import load_weights, save_weights

__all__ = ["PublishedWeights", "IMAGENET1K_V1", "PUBLISHED", "published_weights", "download_imagenet",
           "fetch_weights", "weights_file", "resolve_weights", "cache_dir", "IMAGENET_URL", "HASH_REGEX"]

#: torchvision's ImageNet weights for its AlexNet (legacy torch format, 233 MB)
IMAGENET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"

#: as in ``torch.hub``: the hex digits after a '-' and before the extension are a prefix of the
#: file's SHA-256 (``alexnet-owt-7be5be79.pth``). A name without them is not verified.
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")

_CHUNK = 1 << 20


# ----------------------------------------------------------------------------- the cache

def cache_dir() -> Path:
    """Where downloads are kept: ``$FASTALEX_HOME``, else ``$XDG_CACHE_HOME/fastalex``,
    else ``~/.cache/fastalex``. Not created here."""
    return cache_home()


def _hash_prefix(filename: str):
    """torch.hub's rule: the hex digits after the last '-' before the extension
    (``alexnet-owt-7be5be79.pth`` -> ``7be5be79``), or None."""
    match = HASH_REGEX.search(filename)
    return match.group(1) if match and match.group(1) else None


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            sha.update(chunk)
    return sha.hexdigest()


#: the advice ending every WeightsUnavailableError: in words that fit Python and the command line,
#: which prints these messages as they are
_HOW_TO = ("To use a local copy instead, pass its path as the weights (weights=PATH in Python, "
           "--weights FILE on the command line), or fill the cache from it with `fastalex weights download "
           "--url file:///path/to/alexnet-owt-7be5be79.pth`; FASTALEX_WEIGHTS_URL names a mirror, "
           "and --random-weights tests the pipeline without weights.")


@dataclass(frozen=True)
class PublishedWeights:
    """Published weights and their facts, in the spirit of torchvision's ``AlexNet_Weights``.

    ``url`` and ``file_name`` say where they come from and how they are cached; every download
    is checked against ``hash_prefix`` (the start of the file's SHA-256, torch.hub's rule),
    whatever the URL it came from is called. ``variant`` and ``num_classes`` say which model
    they fit; :attr:`preprocess` (alias :attr:`transforms`) and :attr:`categories` are what
    inputs and outputs mean.

    The cache (:func:`cache_dir`) holds ``<stem>.npz`` (converted) and ``<stem>.npz.sha256``
    (its digest, ``sha256sum -c`` format), where ``<stem>`` is ``file_name`` without its
    extension. A ``<stem>.pth`` found there (an interrupted conversion, or the official file
    copied in by hand) is used if its hash checks out.
    """

    name: str
    url: str
    file_name: str
    hash_prefix: str
    variant: str = "torchvision"
    num_classes: int = 1000
    description: str = ""

    @property
    def stem(self) -> str:
        return Path(self.file_name).stem

    @property
    def preprocess(self) -> dict:
        """``{"resize", "crop", "mean", "std"}``: the evaluation transform these weights expect."""
        return get_preprocess(self.variant)

    transforms = preprocess

    @property
    def categories(self) -> tuple:
        """The class names, in the weights' class order."""
        return imagenet_labels()

    def paths(self) -> dict[str, Path]:
        """Where the cache keeps these weights: ``npz``, ``digest``, ``raw`` (a ``.pth`` to
        convert) and ``lock``."""
        d = cache_dir()
        return {"npz": d / f"{self.stem}.npz", "digest": d / f"{self.stem}.npz.sha256",
                "raw": d / f"{self.stem}.pth", "lock": d / f".{self.stem}.lock"}

    def cached(self) -> Path | None:
        """The cached, verified ``.npz``, or None if there is none yet (an ``.npz`` without its
        digest, e.g. from an older fastalex, cannot be verified and counts as none: the next
        download replaces it). A cache entry whose content no longer matches its recorded
        digest raises :class:`CachedWeightsError`, which says how to clear it (about 0.15 s
        per check for the ImageNet weights)."""
        p = self.paths()
        if not p["npz"].is_file() or not p["digest"].is_file():
            return None  # no digest (an older fastalex, or interrupted): unverifiable, fetched again
        try:
            recorded = p["digest"].read_text().split()[0]
        except (OSError, IndexError, UnicodeError):
            recorded = None
        if recorded is None or _sha256(p["npz"]) != recorded:
            raise CachedWeightsError(
                f"the cached weights {p['npz']} are damaged or were replaced: their SHA-256 does "
                f"not match the one recorded in {p['digest'].name} when they were made. Delete "
                f"them (rm '{p['npz']}' '{p['digest']}') or run `fastalex weights download --force`.")
        return p["npz"]

    def raw_problem(self) -> str | None:
        """What is wrong with the ``<stem>.pth`` in the cache (one copied there by hand): None
        if there is none or its SHA-256 starts with :attr:`hash_prefix`, else a sentence saying
        it failed its hash check, where it is and what to do."""
        raw = self.paths()["raw"]
        try:
            if not raw.is_file():
                return None
            digest = _sha256(raw)
        except OSError as exc:
            return f"{raw} cannot be read ({exc.strerror or exc}); delete it or fix its permissions"
        if digest.startswith(self.hash_prefix):
            return None
        return (f"{raw} failed its hash check: its SHA-256 is {digest[:16]}..., but the official "
                f"{self.file_name}'s starts with {self.hash_prefix}, so it is damaged (a partial "
                f"copy?) or another file. Delete it (rm '{raw}') and copy the official "
                f"{self.file_name} there again, or download it")

    def download(self, url=None, progress=None, force=False) -> Path:
        """The cached ``.npz`` of these weights, downloading and converting them if needed.

        ``url``: where to get them (default ``$FASTALEX_WEIGHTS_URL``, else :attr:`url`;
        ``http(s)://`` or ``file://``). ``progress``: a progress bar on stderr (None: only when
        stderr is a terminal). ``force``: download again even if cached.

        The download goes to a ``.part`` file in :func:`cache_dir`, must be complete and have
        a SHA-256 starting with :attr:`hash_prefix`, is renamed to ``<stem>.pth``, converted
        to ``<stem>.npz`` with its digest next to it (each written atomically), and the
        ``.pth`` is deleted. Processes take turns through a lock file, so two downloads at
        once both end with the same good cache; ``.part`` files left by a killed download
        are removed by the next one. Failures raise :class:`WeightsUnavailableError` and
        leave nothing that looks complete.
        """
        url = url or os.environ.get("FASTALEX_WEIGHTS_URL") or self.url
        scheme = urllib.parse.urlparse(url).scheme
        if scheme not in ("http", "https", "file"):
            raise WeightsUnavailableError(f"cannot download {url!r}: only http(s):// and file:// URLs "
                                          f"are supported. {_HOW_TO}")
        if progress is None:
            progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
        if not force:
            found = self.cached()
            if found is not None:
                return found
        directory = cache_dir()
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WeightsUnavailableError(f"cannot create the cache directory {directory} ({exc}); "
                                          "set FASTALEX_HOME to a writable directory") from None
        p = self.paths()
        with _cache_lock(p["lock"], progress):
            _remove_stale_parts(directory, self.stem)  # ours are gone; others' writers are dead
            if not force:  # another process may have finished while we waited
                found = self.cached()
                if found is not None:
                    return found
            raw = p["raw"]
            problem = None if force else self.raw_problem()
            if force or problem is not None or not raw.is_file():
                try:
                    _fetch(url, raw, progress, self.hash_prefix)
                except WeightsUnavailableError as exc:
                    if problem is None:
                        raise
                    raise WeightsUnavailableError(f"{problem}. (Downloading them instead failed: "
                                                  f"{str(exc).replace(_HOW_TO, '').strip()})") from None
            try:
                state = load_weights(raw)
            except WeightsFileError as exc:
                raw.unlink(missing_ok=True)
                raise WeightsUnavailableError(f"the file downloaded from {url} is not usable weights: {exc}") from None
            p["digest"].unlink(missing_ok=True)  # readers see "not cached" (and wait) meanwhile
            save_weights(state, p["npz"])
            digest = _sha256(p["npz"])
            atomic_write(p["digest"], lambda f: f.write(f"{digest}  {p['npz'].name}\n".encode()))
            raw.unlink(missing_ok=True)
            return p["npz"]

    def fetch(self, url=None, progress=None) -> Path:
        """The cached ``.npz``, downloaded first if needed (see :meth:`download`). A download
        that fails raises :class:`WeightsUnavailableError` saying that the weights are not
        cached, then why they cannot be downloaded."""
        try:
            return self.download(url=url, progress=progress)
        except WeightsUnavailableError as exc:
            raise WeightsUnavailableError(f"the published {self.name} weights are not cached and cannot be "
                                          f"downloaded: {exc}") from None

    def get_state_dict(self, url=None, progress=None) -> dict[str, np.ndarray]:
        """The state dict, from the cache (downloaded first if needed; see :meth:`fetch`)."""
        return load_weights(self.fetch(url=url, progress=progress))

    def check_fits(self, variant=None, num_classes=None):
        """Raise :class:`WeightsMismatchError` (before anything is downloaded) unless these
        weights fit the AlexNet ``variant`` with ``num_classes`` classes (None: any)."""
        fits = (self.variant, self.num_classes)
        if variant is not None and variant != self.variant:
            raise WeightsMismatchError(
                f"no published ImageNet weights exist for the {variant!r} AlexNet (the {self.name} weights "
                f"fit the {self.variant!r} one); use that variant, weights you trained, or random weights",
                f"the published {self.name} weights", fits)
        if num_classes is not None and num_classes != self.num_classes:
            raise WeightsMismatchError(f"the published {self.name} weights have {self.num_classes} classes, "
                                       f"not {num_classes}", f"the published {self.name} weights", fits)


#: torchvision's ``AlexNet_Weights.IMAGENET1K_V1`` (top-1 56.5%, top-5 79.1% on ImageNet-1k)
IMAGENET1K_V1 = PublishedWeights(
    name="IMAGENET1K_V1", url=IMAGENET_URL, file_name="alexnet-owt-7be5be79.pth",
    hash_prefix=_hash_prefix("alexnet-owt-7be5be79.pth"), variant="torchvision", num_classes=1000,
    description="torchvision's AlexNet trained on ImageNet-1k")

#: the names ``weights=`` accepts for published weights (case-insensitive)
PUBLISHED = {"imagenet": IMAGENET1K_V1, "imagenet1k_v1": IMAGENET1K_V1}


def published_weights(weights) -> PublishedWeights | None:
    """The :class:`PublishedWeights` that ``weights`` names (``"imagenet"``, ``"IMAGENET1K_V1"``
    or the object itself), or None for anything else."""
    if isinstance(weights, PublishedWeights):
        return weights
    if isinstance(weights, str):
        return PUBLISHED.get(weights.lower())
    return None


@contextlib.contextmanager
def _cache_lock(path: Path, progress=False):
    """An exclusive lock on ``path`` (``flock``: released by the kernel if the holder dies);
    a no-op where ``fcntl`` does not exist."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        raise WeightsUnavailableError(f"cannot create the lock file {path} ({exc}); "
                                      "set FASTALEX_HOME to a writable directory") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                print(f"fastalex: waiting for another process downloading into {path.parent}",
                      file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_stale_parts(directory: Path, stem: str):
    """Delete the ``.part`` files of earlier downloads/conversions of ``stem`` (call with the
    lock held: their writers are gone)."""
    for part in directory.glob(f".{glob.escape(stem)}.*.part"):
        try:
            part.unlink()
        except OSError:
            pass


def _fetch(url: str, dest: Path, progress: bool, expected: str | None):
    """Download ``url`` to ``dest`` through :func:`fastalex._files.atomic_write` (a ``.part`` file renamed into
    place only when complete, deleted otherwise), verifying the length and that the SHA-256
    starts with ``expected``. The download goes through :func:`fastalex._files.open_bounded`:
    at most :data:`~fastalex._files.MAX_WEIGHTS_BYTES`, within
    :data:`~fastalex._files.WEIGHTS_DEADLINE` seconds, and a ``file://`` URL must name a
    regular file (a FIFO or ``/dev/zero`` is refused at once)."""

    def download(out):
        sha = hashlib.sha256()
        with _files.open_bounded(url, _files.MAX_WEIGHTS_BYTES, _files.WEIGHTS_DEADLINE) as reader:
            total = reader.size
            from tqdm import tqdm
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                      disable=not progress, desc=dest.name, leave=True) as bar:
                done = 0
                for chunk in reader:
                    out.write(chunk)
                    sha.update(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
        if total is not None and done != total:
            raise WeightsUnavailableError(
                f"download of {url} was interrupted: got {done} of {total} bytes. {_HOW_TO}")
        digest = sha.hexdigest()
        if expected is not None and not digest.startswith(expected):
            raise WeightsUnavailableError(
                f"download of {url} is not the expected file: its SHA-256 is {digest}, but the "
                f"weights' SHA-256 starts with {expected} (a corrupt download, or a mirror serving "
                f"other weights). The download was deleted. {_HOW_TO}")

    try:
        atomic_write(dest, download)
    except WeightsUnavailableError:
        raise
    except FileProblem as problem:
        if _files.is_url(url) and _files.scheme_of(url) == "file":
            where = f"the local file {_file_url_path(url)}"
            if problem.missing:
                raise WeightsUnavailableError(f"cannot copy {url}: {where} does not exist. {_HOW_TO}") from None
            raise WeightsUnavailableError(f"cannot copy {url}: {where} {problem.reason}. {_HOW_TO}") from None
        raise WeightsUnavailableError(f"cannot download {url}: it {problem.reason} (the partial "
                                      f"download was deleted). {_HOW_TO}") from None
    except urllib.error.HTTPError as exc:
        raise WeightsUnavailableError(f"cannot download {url}: HTTP {exc.code} {exc.reason}. {_HOW_TO}") from None
    except urllib.error.URLError as exc:  # refused, DNS, no route: most likely offline
        raise WeightsUnavailableError(f"cannot download {url} ({exc.reason}); are you offline? "
                                      f"{_HOW_TO}") from None
    except (http.client.HTTPException, ConnectionError, TimeoutError) as exc:
        raise WeightsUnavailableError(f"download of {url} was interrupted ({type(exc).__name__}: "
                                      f"{exc}). {_HOW_TO}") from None
    except OSError as exc:  # the cache side: disk full, permissions
        raise WeightsUnavailableError(f"cannot save the download of {url} in {dest.parent} ({exc}); "
                                      "set FASTALEX_HOME to a writable directory with room") from None
    except ValueError as exc:
        raise WeightsUnavailableError(f"cannot download {url!r}: {exc}. {_HOW_TO}") from None


def _file_url_path(url):
    try:
        return _files.local_path(url)
    except FileProblem:
        return url


def download_imagenet(url=None, progress=None, force=False) -> Path:
    """The cached ``.npz`` of torchvision's ImageNet AlexNet weights (:data:`IMAGENET1K_V1`),
    downloading it if needed; see :meth:`PublishedWeights.download`. Whatever ``url`` (or
    ``$FASTALEX_WEIGHTS_URL``) is called, its content must have the official SHA-256 prefix
    ``7be5be79``."""
    return IMAGENET1K_V1.download(url=url, progress=progress, force=force)


# ----------------------------------------------------------------------------- URLs

def fetch_weights(url) -> str:
    """A local copy of the weights file at ``url``, downloaded once per machine into
    ``<cache_dir>/remote/<hash of the URL>/<file name>`` (written to a temporary name and
    renamed): ``http(s)://`` and ``file://`` with urllib (a hash in the file name, as in
    ``alexnet-owt-7be5be79.pth``, is verified), other schemes (``s3://``, ``gs://``, ...) with
    fsspec. The copy is a ``.pth`` or ``.npz`` as at the URL.

    Every download is bounded (:func:`fastalex._files.open_bounded`): at most
    :data:`~fastalex._files.MAX_WEIGHTS_BYTES`, within :data:`~fastalex._files.WEIGHTS_DEADLINE`
    seconds over http(s), and ``file://`` must name a regular file; a download that fails
    leaves nothing in the cache."""
    name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1] or "weights"
    dest = cache_dir() / "remote" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if dest.is_file():
        return str(dest)

    def copy(out):
        with _files.open_bounded(url, _files.MAX_WEIGHTS_BYTES, _files.WEIGHTS_DEADLINE) as reader:
            for chunk in reader:
                out.write(chunk)

    try:
        if _files.scheme_of(url) in ("http", "https", "file"):
            _fetch(url, dest, False, _hash_prefix(name))
        else:
            atomic_write(dest, copy)
    except _files.FileProblem as problem:
        raise WeightsUnavailableError(f"cannot fetch {url}: it {problem.reason} (the partial "
                                      "copy was deleted)") from None
    except (OSError, ValueError) as exc:  # fsspec's errors (no such object, no access), the cache's
        raise WeightsUnavailableError(f"cannot fetch {url} ({type(exc).__name__}: {exc})") from None
    finally:
        if not dest.is_file():  # failed: no empty folder left behind either
            with contextlib.suppress(OSError):
                dest.parent.rmdir()
                dest.parent.parent.rmdir()  # remote/, if nothing else is there
    return str(dest)


def weights_file(weights) -> str:
    """The local file ``weights`` (a path or a URL) names: the path itself, or the URL's copy in
    the cache (fetched once, see :func:`fetch_weights`)."""
    return fetch_weights(weights) if _files.is_url(weights) else os.fspath(weights)


# ----------------------------------------------------------------------------- what weights= accepts

def resolve_weights(weights, variant=None) -> dict[str, np.ndarray]:
    """A state dict from what ``alexnet(weights=...)`` accepts.

    A mapping is returned as is; published weights (``"imagenet"``, ``"IMAGENET1K_V1"`` or a
    :class:`PublishedWeights`) come from the cache, downloaded once (only for their variant,
    ``"torchvision"``); a URL (``https://``, ``s3://``, ...) is fetched once into
    :func:`cache_dir` (see :func:`fetch_weights`); a ``str`` or path-like
    is read with :func:`load_weights`.
    """
    if isinstance(weights, Mapping):
        return weights
    meta = published_weights(weights)
    if meta is not None:
        meta.check_fits(variant)
        return meta.get_state_dict()
    if _files.is_url(weights):  # a URL: fetched once into the cache
        return load_weights(fetch_weights(weights))
    if isinstance(weights, (str, os.PathLike)):
        return load_weights(weights)
    raise TypeError(f"weights must be None, 'imagenet', a path to an .npz/.pth file or a state dict, "
                    f"got {type(weights).__name__}")
