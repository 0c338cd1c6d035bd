"""Where data lives, parsed once: a local path or a URL, a file or a folder, a container and a
member inside it (``file.h5:/group/ds``, ``store.zarr/path``), and its format, from the suffix
(any case) or refused with the list of formats.

Every reader, writer and guard takes an :class:`Address`, so ``.hdf5`` means HDF5 everywhere and
``out/q.H5`` is the same as ``out/q.h5``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from ..errors import UsageError

__all__ = ["Address", "parse_address", "FORMAT_SUFFIXES", "is_url"]

# Format -> the suffixes that name it (lower case; matched in any case).
FORMAT_SUFFIXES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "tiff": (".tif", ".tiff"),
    "png": (".png",),
    "hdf5": (".h5", ".hdf5", ".hdf"),
    "zarr": (".zarr",),
})
_HDF5_MEMBER = re.compile(r"^(?P<file>.+?\.(?:h5|hdf5|hdf)):(?P<member>.*)$", re.IGNORECASE)
_ZARR_MEMBER = re.compile(r"^(?P<file>.+?\.zarr)/(?P<member>.*)$", re.IGNORECASE)


def is_url(text: str | os.PathLike | None) -> bool:
    return text is not None and "://" in str(text) and not str(text).startswith("file://")


@dataclass(frozen=True)
class Address:
    """One place data is read from or written to.

    Attributes:
        given: the text as the user wrote it (for messages).
        location: the file or folder: a local path or a URL (``file://`` removed), no member.
        member: the dataset inside an HDF5 file or the path inside a Zarr store; '' for none.
        format: 'tiff', 'png', 'hdf5', 'zarr' or 'folder'.
    """

    given: str
    location: str
    member: str
    format: str

    @property
    def is_url(self) -> bool:
        return is_url(self.location)

    @property
    def path(self) -> Path:
        """The local file or folder (for a URL: its name only, for staging)."""
        return Path(self.location)

    @property
    def is_folder(self) -> bool:
        return self.format == "folder"

    def with_member(self, default: str) -> Address:
        """This address with ``default`` as its member where none was given."""
        return self if self.member else Address(self.given, self.location, default, self.format)

    def __str__(self) -> str:
        if not self.member:
            return self.location
        return f"{self.location}:/{self.member}" if self.format == "hdf5" else f"{self.location}/{self.member}"


def _format_of(location: str) -> str | None:
    suffix = os.path.splitext(location.rstrip("/"))[1].lower()
    if not suffix:
        return "folder"
    return next((fmt for fmt, suffixes in FORMAT_SUFFIXES.items() if suffix in suffixes), None)


def _formats_line(formats: tuple[str, ...]) -> str:
    names = []
    for fmt in formats:
        if fmt == "folder":
            names.append("a folder (no suffix, or ending in /)")
        elif fmt == "hdf5":
            names.append("HDF5 (.h5, .hdf5 or .hdf, optionally FILE.h5:/dataset)")
        else:
            names.append(f"{fmt.upper() if fmt != 'zarr' else 'OME-Zarr'} ({', '.join(FORMAT_SUFFIXES[fmt])})")
    return "; ".join(names)


def parse_address(text: str | os.PathLike, formats: tuple[str, ...] = ("tiff", "png", "hdf5", "zarr", "folder"),
                  what: str = "output") -> Address:
    """Parse ``text`` into an :class:`Address` whose format is one of ``formats``; anything else is
    refused with one line naming the formats. A trailing ``/`` makes any name a folder."""
    given = str(text)
    location = given[len("file://"):] if given.startswith("file://") else given
    member = ""
    found = _HDF5_MEMBER.match(location) or _ZARR_MEMBER.match(location)
    if found:
        location, member = found["file"], found["member"].strip("/")
    fmt = "folder" if location.endswith("/") and _format_of(location) != "zarr" else _format_of(location)
    location = location.rstrip("/") or location
    if fmt is None or fmt not in formats:
        kind = f"{os.path.splitext(location)[1]!r}" if fmt is None else f"a {fmt if fmt != 'zarr' else 'OME-Zarr'}"
        raise UsageError(f"{given}: {kind} is not a format this {what} can take; use {_formats_line(formats)}")
    return Address(given, location, member, fmt)
