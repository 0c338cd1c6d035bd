"""A folder or file that many processes write piece by piece: a local path or a prefix on an
object store (``s3://bucket/out.ome.zarr``), the same few operations on both.

Blockwise outputs (OME-Zarr images, the markers of finished blocks, the cells' scratch) are
written by Dask workers that may sit on other machines; on a store each piece is one object,
written whole or not at all, so a killed worker leaves no half-written piece behind. A Place is
only its text: it pickles as it is and opens its filesystem in the process that uses it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from .address import is_url

__all__ = ["Place"]


class Place:
    """A local path or a URL, with the operations blockwise outputs need."""

    def __init__(self, location: str | os.PathLike) -> None:
        text = str(location)
        self.location = text.rstrip("/") if is_url(text) else str(Path(text))

    def __repr__(self) -> str:
        return f"Place({self.location!r})"

    def __str__(self) -> str:
        return self.location

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Place) and other.location == self.location

    def __hash__(self) -> int:
        return hash(self.location)

    def __getstate__(self) -> dict:
        return {"location": self.location}  # the filesystem is opened again where it is used

    def __setstate__(self, state: dict) -> None:
        self.location = state["location"]

    @property
    def is_url(self) -> bool:
        return is_url(self.location)

    def __truediv__(self, name: str) -> Place:
        return Place(f"{self.location}/{name}" if self.is_url else Path(self.location) / name)

    @property
    def name(self) -> str:
        return self.location.rsplit("/", 1)[-1] if self.is_url else Path(self.location).name

    @property
    def parent(self) -> Place:
        if self.is_url:
            return Place(self.location.rsplit("/", 1)[0])
        return Place(Path(self.location).parent)

    def resolved(self) -> str:
        """The location as compared with others: an absolute path, or the URL."""
        return self.location if self.is_url else str(Path(self.location).resolve())

    def contains(self, other: Place) -> bool:
        """Whether ``other`` is this place or lies inside it."""
        mine, theirs = self.resolved(), other.resolved()
        return theirs == mine or theirs.startswith(mine.rstrip("/") + ("/" if self.is_url else os.sep))

    @cached_property
    def _fs(self) -> Any:
        if not self.is_url:
            return None
        from .storage import filesystem

        return filesystem(self.location, retries=5)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        if not self.is_url:
            yield
            return
        from .storage import named

        with named(self.location):
            yield

    def _key(self) -> str:
        return self._fs._strip_protocol(self.location)

    def is_file(self) -> bool:
        if not self.is_url:
            return Path(self.location).is_file()
        with self._errors():
            return self._fs.isfile(self._key())

    def names(self) -> set[str]:
        """The names of the files and folders directly inside (none where it does not exist)."""
        if not self.is_url:
            folder = Path(self.location)
            return {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        with self._errors():
            try:
                listed = self._fs.ls(self._key(), detail=False, refresh=True)
            except FileNotFoundError:
                return set()
        key = self._key().rstrip("/")
        return {p.rstrip("/").rsplit("/", 1)[-1] for p in listed if p.rstrip("/") != key}

    def is_free(self) -> bool:
        """Whether nothing is here, or an empty folder: a new output may be made here."""
        if not self.is_url:
            path = Path(self.location)
            return not path.exists() or (path.is_dir() and not any(path.iterdir()))
        with self._errors():
            try:
                found = self._fs.find(self._key(), detail=True)
            except FileNotFoundError:
                return True
        # objects only: some stores (SeaweedFS, MinIO) keep a removed output's folders, empty
        return not any(info.get("type") == "file" for info in found.values())

    def read_bytes(self) -> bytes:
        if not self.is_url:
            return Path(self.location).read_bytes()
        with self._errors():
            return self._fs.cat_file(self._key())

    def open(self) -> Any:
        """The file for reading, to be closed by the caller (a store's object read by ranges as
        it is read, not fetched whole)."""
        if not self.is_url:
            return open(self.location, "rb")
        with self._errors():
            return self._fs.open(self._key(), "rb")

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_bytes(self, data: bytes) -> None:
        """Whole or not at all: a temporary file renamed locally, one PUT on a store."""
        if self.is_url:
            with self._errors():
                self._fs.pipe_file(self._key(), data)
            return
        path = Path(self.location)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
        temporary.write_bytes(data)
        os.replace(temporary, path)

    def make_folder(self) -> None:
        """A local folder made (with its parents); on a store folders are implied by their objects."""
        if not self.is_url:
            Path(self.location).mkdir(parents=True, exist_ok=True)

    def remove(self) -> None:
        """This file or folder and all it holds, where it exists."""
        if not self.is_url:
            import shutil

            path = Path(self.location)
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            return
        with self._errors():
            if self._fs.exists(self._key()):
                self._fs.rm(self._key(), recursive=True)

    def zarr(self, read_only: bool = False) -> Any:
        """What ``zarr.open_*`` takes for this place: the path, or a store over the URL."""
        if not self.is_url:
            return self.location
        from .storage import zarr_store

        return zarr_store(self.location, read_only)
