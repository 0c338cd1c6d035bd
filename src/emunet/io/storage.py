"""Object storage wherever a path goes: ``s3://bucket/key`` (s3fs), and any other fsspec URL
(``gs://``, ``az://``, ``https://`` for reading) when its package is installed.

Local files stay the fast path. An input on a store is copied once into a local cache and read
from there (copied again only when the object changes). A run whose ``out_dir`` is a URL writes
into a local folder that :class:`RunMirror` uploads as files complete: an object appears whole or
not at all, checkpoints pruned locally are deleted on the store, and when the store goes away
training goes on while the uploads are retried with backoff.

Credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, ``~/.aws``); the endpoint of an S3-compatible store (OBS, MinIO, Ceph,
SeaweedFS) from ``storage.endpoint_url`` or ``AWS_ENDPOINT_URL``. Neither is ever written into a
config, log or report.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError, StorageError
from .address import is_url

log = logging.getLogger("emunet")

__all__ = ["shown", "mirrored_run", "using", "use", "settings", "is_url", "local_copy", "exists", "local_folder", "staged_output", "RunMirror",
           "download_run", "check_store", "filesystem", "zarr_store", "named"]

# The package that gives fsspec each protocol, for the error when it is missing.
PACKAGES = MappingProxyType({"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs",
                             "http": "aiohttp", "https": "aiohttp"})


@dataclass
class StorageConfig:
    """Args:
    endpoint_url: an S3-compatible store's endpoint (OBS, MinIO, ...); unset: AWS_ENDPOINT_URL,
        else AWS itself.
    region: the store's region; unset: AWS_REGION / the profile's.
    cache: local folder for inputs copied from a store and for runs being uploaded to one;
        unset: $EMUNET_CACHE, else ~/.cache/emunet.
    retry_s: how long, at the end of a command, uploads to a store that went away are retried
        before the command fails (naming the local copy, which keeps everything).
    """

    endpoint_url: str | None = None
    region: str | None = None
    cache: str | None = None
    retry_s: float = 300.0

    def validate(self) -> None:
        ConfigError.check([
            (self.endpoint_url is None or self.endpoint_url.startswith(("http://", "https://")),
             f"storage.endpoint_url must be an http:// or https:// URL, got {self.endpoint_url!r}"),
            (0 <= self.retry_s < math.inf, "storage.retry_s must be a number of seconds >= 0"),
        ])


# The settings of the command running in this context (thread or task), set for a block by
# ``using``: a run's storage settings reach every URL it opens without being passed down each call.
_SETTINGS: ContextVar[StorageConfig] = ContextVar("emunet_storage", default=StorageConfig())
# Run URLs being mirrored now in this context, and their local folders.
_MIRRORED: ContextVar[tuple[tuple[str, Path], ...]] = ContextVar("emunet_mirrored", default=())


@contextmanager
def using(settings: StorageConfig) -> Iterator[StorageConfig]:
    """Use these settings for every URL opened inside the block (the CLI passes the run's ``storage``)."""
    token = _SETTINGS.set(settings)
    try:
        yield settings
    finally:
        _SETTINGS.reset(token)


def use(settings: StorageConfig) -> None:
    """Use these settings for the rest of this context: the CLI runs each command in its own."""
    _SETTINGS.set(settings)


def settings() -> StorageConfig:
    """The storage settings in force here (for work handed to other threads or processes)."""
    return _SETTINGS.get()


def _endpoint() -> str | None:
    return _SETTINGS.get().endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def cache_root() -> Path:
    return Path(_SETTINGS.get().cache or os.environ.get("EMUNET_CACHE") or Path.home() / ".cache" / "emunet").expanduser()


def _options(url: str, retries: int = 2) -> tuple[type, dict[str, Any]]:
    """The fsspec filesystem class of ``url``'s protocol and the options this command's store
    settings give it (endpoint, region, timeouts)."""
    import fsspec

    protocol = url.split("://", 1)[0].lower()
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except ImportError:
        package = PACKAGES.get(protocol, f"the fsspec package for {protocol}://")
        raise StorageError(f"{url}: {protocol}:// needs {package}: pip install {package}") from None
    except ValueError:
        raise StorageError(f"{url}: unknown storage protocol {protocol}://") from None
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        client = {"endpoint_url": _endpoint()} if _endpoint() else {}
        if _SETTINGS.get().region:
            client["region_name"] = _SETTINGS.get().region
        # fail fast on a store that does not answer; the uploader has its own retries
        options = {"client_kwargs": client, "skip_instance_cache": True,
                   "config_kwargs": {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": retries}}}
    return cls, options


def _filesystem(url: str):
    cls, options = _options(url)
    return cls(**options)


def filesystem(url: str, retries: int = 2, asynchronous: bool = False):
    """The fsspec filesystem of ``url`` with this command's store settings, one per process for
    each set of settings and credentials (blockwise tasks open many places; each its own client
    would leave its connections to be closed by the garbage collector)."""
    cls, options = _options(url, retries)
    credentials = tuple(os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                                                    "AWS_PROFILE"))
    return _shared_filesystem(cls, json.dumps(options, sort_keys=True), asynchronous, hash(credentials))


@lru_cache(maxsize=8)
def _shared_filesystem(cls: type, options: str, asynchronous: bool, credentials: int):
    # no listings cache: the instance lives as long as the process while other workers write, and
    # a cached listing would answer "no such object" for what they wrote since
    kwargs = {**json.loads(options), "use_listings_cache": False}
    if not asynchronous:
        return cls(**kwargs)  # closes its own connections when collected
    fs = cls(**kwargs, asynchronous=True)
    atexit.register(_close_zarr_session, fs)
    return fs


def _close_zarr_session(fs) -> None:
    """Close an asynchronous filesystem's connections on Zarr's event loop, where Zarr opened
    them (at exit, before that loop stops; else each would be reported as unclosed)."""
    creator = getattr(fs, "_s3creator", None)
    if creator is None:
        return
    from zarr.core.sync import sync

    try:
        sync(creator.__aexit__(None, None, None), timeout=5)
    except Exception:  # the loop already gone: nothing left to close in order
        pass


def zarr_store(url: str, read_only: bool):
    """A Zarr store of the group or array at ``url`` on an object store, with this command's
    store settings; chunks are read and written one request each, never copied down whole.
    Blocks written by many workers retry a failed request a few times before their task fails."""
    from zarr.storage import FsspecStore

    fs = filesystem(url, retries=5, asynchronous=True)
    return FsspecStore(fs, path=fs._strip_protocol(url.rstrip("/")), read_only=read_only)


def _where() -> str:
    return f" at {_endpoint()}" if _endpoint() else ""


@contextmanager
def named(url: str) -> Iterator[None]:
    """Store errors as one line naming the URL and what to check."""
    try:
        yield
    except StorageError:
        raise
    except PermissionError:
        raise StorageError(f"{url}: access denied by the store{_where()}; check the credentials (AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)") from None
    except FileNotFoundError as exc:
        if "bucket" in str(exc).lower():
            raise StorageError(f"{url}: no such bucket on the store{_where()}; create it or check the URL") from None
        raise StorageError(f"{url}: no such object or prefix on the store{_where()}") from None
    except Exception as exc:  # connection refused, DNS, timeouts: botocore's and aiohttp's own types
        raise StorageError(f"{url}: cannot reach the store{_where()} ({type(exc).__name__}: {exc})") from None


def _key(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:12]


def _tag(info: dict[str, Any]) -> str:
    return str(info.get("ETag") or info.get("etag") or (info.get("size"), info.get("LastModified") or info.get("mtime")))


def local_copy(path: str | os.PathLike) -> Path:
    """``path`` itself for a local path; for a URL a local copy of its object, or of the image
    files under its prefix (as a folder), copied into the cache once and again only when the
    object changed on the store."""
    if not is_url(path):
        return Path(path)
    url = str(path).rstrip("/")
    fs = _filesystem(url)
    # under its own name, so that slices are named as the files on the store are
    target = cache_root() / "inputs" / _key(url) / url.rsplit("/", 1)[-1]
    manifest_path = target.parent / "manifest.json"
    with named(url):
        info = fs.info(url)
        if info["type"] == "directory":
            files = {p: i for p, i in fs.find(url, detail=True).items() if i["type"] == "file"}
            if not files:
                raise FileNotFoundError(url)
            wanted = {Path(p).relative_to(fs._strip_protocol(url)).as_posix(): (p, _tag(i)) for p, i in files.items()}
        else:
            wanted = {"": (url, _tag(info))}
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        for rel, (source, tag) in wanted.items():
            local = target / rel if rel else target
            if manifest.get(rel) != tag or not local.is_file():
                local.parent.mkdir(parents=True, exist_ok=True)
                partial = local.with_name(f".{local.name}.part")
                fs.get_file(source, str(partial))
                partial.replace(local)  # a copy is in place whole or not at all
                manifest[rel] = tag
        manifest_path.write_text(json.dumps(manifest))
    return target


def exists(path: str | os.PathLike) -> bool:
    if not is_url(path):
        return Path(path).exists()
    url = str(path).rstrip("/")
    with named(url):
        return _filesystem(url).exists(url)


def check_store(url: str) -> None:
    """Fail now, before any work, if the store at ``url`` cannot be reached, refuses the
    credentials or lacks the bucket."""
    # the process's shared instance: a throwaway one would be closed by the garbage collector in
    # whichever thread it runs, an event loop's too, where closing it fails
    fs = filesystem(url)
    bucket = fs._strip_protocol(url).split("/", 1)[0]
    with named(url):
        fs.ls(bucket, refresh=True)


def _put(fs, local: Path, url: str) -> None:
    fs.put_file(str(local), url)  # one PUT (or a multipart upload completed at once): whole or absent


@contextmanager
def staged_output(target: str | os.PathLike | None, start_from_store: bool = False) -> Iterator[Path | None]:
    """A local path to write ``target`` to: itself when local; for a URL a file or folder in
    the cache, uploaded (each file whole) when the block ends without an error. With
    ``start_from_store`` a file already on the store is copied down first (an HDF5 file that
    gains a dataset keeps its others)."""
    if target is None or not is_url(target):
        yield None if target is None else Path(target)
        return
    url = str(target).rstrip("/")
    check_store(url)
    staging = cache_root() / "outputs" / _key(url)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    local = staging / url.rsplit("/", 1)[-1]
    if start_from_store and exists(url):
        shutil.copyfile(local_copy(url), local)
    yield local
    fs = _filesystem(url)
    with named(url):
        if local.is_dir():
            for file in sorted(p for p in local.rglob("*") if p.is_file()):
                _put(fs, file, f"{url}/{file.relative_to(local).as_posix()}")
        elif local.is_file():
            _put(fs, local, url)
    shutil.rmtree(staging, ignore_errors=True)


def shown(path: str | os.PathLike) -> str:
    """``path`` as the user named it: a file in a mirrored run's local folder as its URL."""
    text = str(path)
    for url, local in _MIRRORED.get():
        if text == str(local) or text.startswith(str(local) + os.sep):
            return url + text[len(str(local)):].replace(os.sep, "/")
    return text


def local_folder(out_dir: str | os.PathLike) -> Path:
    """Where a run writes: ``out_dir`` itself, or for a URL the local folder mirrored to it
    (inside the folder of a URL above it that is mirrored now, as a cross-validation's folds)."""
    if not is_url(out_dir):
        return Path(out_dir)
    url = str(out_dir).rstrip("/")
    for parent, local in _MIRRORED.get():
        if url == parent or url.startswith(parent + "/"):
            return local / url[len(parent):].lstrip("/")
    return cache_root() / "runs" / f"{_key(url)}-{url.rsplit('/', 1)[-1]}"


@contextmanager
def mirrored_run(out_dir: str, resume: bool, overwrite: bool, run_files: tuple[str, ...], enabled: bool = True
                 ) -> Iterator[Path]:
    """The local folder to run in, mirrored to ``out_dir`` when that is a URL: the store is
    checked before anything runs; a run already there is refused unless resumed (its files are
    copied down first) or overwritten (its ``run_files`` deleted); when the block ends what is
    left is uploaded, and the local folder, then redundant, removed. Does nothing for a local
    ``out_dir``, for a URL inside one mirrored already, or where not ``enabled`` (ranks > 0)."""
    url = str(out_dir).rstrip("/")
    if not is_url(url) or not enabled or any(url == p or url.startswith(p + "/") for p, _ in _MIRRORED.get()):
        yield local_folder(out_dir)
        return
    from ..errors import UsageError

    check_store(url)
    local = local_folder(url)
    fs = _filesystem(url)
    with named(url):
        root = fs._strip_protocol(url)
        remote = sorted(Path(p).relative_to(root).as_posix() for p in fs.find(root))
    copied: list[str] = []
    if resume:
        copied = download_run(url, local)
    else:
        if local.is_dir() and any(local.iterdir()) and not overwrite:
            raise UsageError(f"{local}: an earlier run for {url} left files here that may not all be uploaded; continue "
                             "it with --resume (its files are uploaded then) or replace it with --overwrite")
        if remote and not overwrite:
            shown = ", ".join(remote[:4]) + (" ..." if len(remote) > 4 else "")
            raise UsageError(f"{url}: the output prefix is not empty ({shown}); continue its run with --resume, replace "
                             "it with --overwrite, or choose another --out")
        shutil.rmtree(local, ignore_errors=True)
        with named(url):
            for rel in remote:
                if rel.split("/", 1)[0] in run_files:
                    fs.rm_file(f"{url}/{rel}")
    local.mkdir(parents=True, exist_ok=True)
    mirror = RunMirror(url, local, on_store=remote if resume else (), same_as_store=copied)
    token = _MIRRORED.set(_MIRRORED.get() + ((url, local),))
    try:
        yield local
    except BaseException:
        try:  # a stopped or failed run: upload what it wrote, without holding the user for long
            mirror.close(retry_s=min(30.0, _SETTINGS.get().retry_s))
        except StorageError as exc:
            log.warning(str(exc))
        raise
    else:
        mirror.close()
        shutil.rmtree(local, ignore_errors=True)
    finally:
        _MIRRORED.reset(token)


def download_run(url: str, local: Path) -> list[str]:
    """Copy the run at ``url`` into ``local`` to resume it, keeping newer local files (a run
    whose last uploads failed left them there); returns the files copied (relative paths)."""
    fs = _filesystem(url)
    root = fs._strip_protocol(url.rstrip("/"))
    copied = []
    with named(url):
        for path, info in fs.find(root, detail=True).items():
            rel = Path(path).relative_to(root)
            target = local / rel
            if info["type"] != "file" or target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".{target.name}.part")
            fs.get_file(path, str(partial))
            partial.replace(target)
            copied.append(rel.as_posix())
    return copied


class RunMirror:
    """Uploads a run folder to ``url`` as its files complete, from a background thread.

    Every ``every`` seconds the folder is scanned; a file that is new or changed since its
    last upload is uploaded whole (files in the folder are themselves replaced atomically, and
    temporary files are skipped), and a checkpoint that is gone locally (pruned) is deleted on
    the store. A failed upload is retried with growing pauses (up to a minute) while training
    goes on, with one warning; :meth:`close` makes the final pass, retrying for
    ``settings.retry_s`` before it fails, naming the local copy.
    """

    def __init__(self, url: str, local: Path, every: float = 2.0, on_store: Sequence[str] = (),
                 same_as_store: Sequence[str] = ()) -> None:
        """``on_store``: the files under ``url`` already (its checkpoints are pruned with the
        local ones); ``same_as_store``: local files just copied from there (not uploaded again)."""
        self.url, self.local, self.every = url.rstrip("/"), local, every
        self._fs = _filesystem(self.url)
        self._uploaded: dict[str, tuple[int, int]] = {}
        for rel in same_as_store:
            stat = (local / rel).stat()
            self._uploaded[rel] = (stat.st_size, stat.st_mtime_ns)
        self._remote_checkpoints: set[str] = {rel for rel in on_store if rel.startswith("checkpoints/step_")}
        self._stop = threading.Event()
        self._failing = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="emunet-upload", daemon=True)
        self._thread.start()

    def _changed(self) -> list[tuple[str, Path, tuple[int, int]]]:
        found = []
        for file in sorted(p for p in self.local.rglob("*") if p.is_file()):
            rel = file.relative_to(self.local).as_posix()
            if file.name.startswith(".") or file.name.endswith((".tmp", ".part")):
                continue
            try:
                stat = file.stat()
            except FileNotFoundError:  # replaced between listing and reading
                continue
            if self._uploaded.get(rel) != (stat.st_size, stat.st_mtime_ns):
                found.append((rel, file, (stat.st_size, stat.st_mtime_ns)))
        return found

    def sync(self) -> None:
        """One pass: upload what changed, delete pruned checkpoints. Raises on a store error."""
        with self._lock:
            for rel, file, stamp in self._changed():
                _put(self._fs, file, f"{self.url}/{rel}")
                self._uploaded[rel] = stamp
                if rel.startswith("checkpoints/"):
                    self._remote_checkpoints.add(rel)
            local = {p.relative_to(self.local).as_posix() for p in (self.local / "checkpoints").glob("step_*.pt")}
            for rel in sorted(self._remote_checkpoints - local):
                self._fs.rm_file(f"{self.url}/{rel}")
                self._remote_checkpoints.discard(rel)

    def _run(self) -> None:
        pause = self.every
        while not self._stop.wait(pause):
            try:
                self.sync()
                if self._failing:
                    log.warning(f"{self.url}: the store answers again; uploads caught up")
                self._failing, pause = False, self.every
            except Exception as exc:
                if not self._failing:
                    self._failing = True
                    log.warning(f"{self.url}: upload failed ({type(exc).__name__}: {exc}); training goes on in "
                                f"{self.local} and the uploads are retried")
                pause = min(60.0, pause * 2)

    def close(self, retry_s: float | None = None) -> None:
        """Stop the thread and upload what is left, retrying for ``retry_s`` seconds."""
        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + (_SETTINGS.get().retry_s if retry_s is None else retry_s)
        pause = 1.0
        while True:
            try:
                with named(self.url):
                    self.sync()
                return
            except StorageError as exc:
                if pause == 1.0:
                    log.warning(f"{exc}; retrying for up to {max(0.0, deadline - time.monotonic()):.0f} s "
                                "(storage.retry_s)")
                if time.monotonic() >= deadline:
                    raise StorageError(f"{exc}; everything the run wrote is in {self.local}: resume with --resume when the store "
                                       f"answers (its files are uploaded then), or copy that folder to {self.url}") from None
                time.sleep(pause)
                pause = min(30.0, pause * 2)
