"""Atomic file writes, hashing, output naming and path safety shared by every tool that writes results.

The rules every tool follows, all enforced here:
- a write goes to a temp file next to its target and is renamed over it (`atomic_open`), with the mode a plain
  `open` would give under the user's umask;
- names from data files are joined under their root by `safe_join`, for what is read and for what is written;
- an output location never overlaps an input (`check_output_location`);
- an input's outputs are named by `output_stem` plus a kind suffix, and a plan of outputs is checked for
  collisions (`check_unique_outputs`) before anything is written;
- a tool removes or replaces only what it wrote: its own records and its own temp files
  (`remove_stale_temporaries` only touches temp names of targets the caller is about to write);
- an input is opened by `open_regular_file` (or checked by `check_regular_mode`): regular files only, so a
  FIFO never blocks; a JSON input is read by `read_json_file` on top of it: strict JSON (NaN and Infinity
  refused with where they are), nesting too deep for the parser an error, all naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import posixpath
import re
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

# atomic_open's temp names: "." + target name + "." + mkstemp's 8 random characters + ".tmp".
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$", re.DOTALL)
_UMASK_LOCK = threading.Lock()


class OutputLocationError(ValueError):
    """An output would overlap an input, escape its folder, collide with another output or replace a foreign
    file."""


class OutputWriteError(OSError):
    """An output could not be written (read-only folder, disk full, ...); the message names the file."""


class NonFiniteJSONError(ValueError):
    """A value to be written as JSON is NaN or infinite; the message names where it is."""


class JSONFileError(ValueError):
    """A JSON input is not a regular file, not UTF-8, not strict JSON or nested too deeply; names the file."""


class JSONFileNotFoundError(JSONFileError, FileNotFoundError):
    """A JSON input file does not exist."""


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is set-and-return)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _UMASK_LOCK:  # fallback: set and restore under a lock so that our own threads never see 0
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to `path` that replaces `path` only when the block exits cleanly.

    The file gets the permissions `open` would give (0o666 minus the umask; mkstemp's 0o600 is private). An OS
    error (read-only folder, disk full, ...) is raised as OutputWriteError naming `path`; nothing is left
    behind.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open only writes; got mode {mode!r}")
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The temp file lives in the same folder so that os.replace is a same-filesystem rename.
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _raise_write_error(error, path)
        raise


def _raise_write_error(error: BaseException, path: Path) -> None:
    """Re-raise an OS error of writing `path` as OutputWriteError naming the file and the cause."""
    if isinstance(error, OSError) and not isinstance(error, OutputWriteError) and error.errno is not None:
        reason = {
            errno.EROFS: "read-only file system",
            errno.EACCES: "permission denied",
            errno.ENOSPC: "no space left on device",
            errno.EDQUOT: "disk quota exceeded",
        }.get(error.errno, error.strerror)
        raise OutputWriteError(
            error.errno, f"{path}: cannot write ({reason}); fix the output location and rerun to finish"
        ) from error


def move_into_place(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename a complete file over `target` (same file system: atomic), creating its folder; errors name
    `target`."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
    except OSError as error:
        _raise_write_error(error, target)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to `path` atomically (temp file + rename)."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _non_finite(obj: Any, where: str = "") -> str | None:
    """The location (`[3]['bbox'][0]`) of the first NaN or infinite float in `obj`, or None."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else where or "the value"
    if isinstance(obj, Mapping):
        return next(
            (found for key, value in obj.items() if (found := _non_finite(value, f"{where}[{key!r}]"))), None
        )
    if isinstance(obj, (list, tuple)):
        return next(
            (found for i, value in enumerate(obj) if (found := _non_finite(value, f"{where}[{i}]"))), None
        )
    return None


def dump_json(obj: Any, name: str = "JSON") -> str:
    """Serialise to canonical JSON (sorted keys, 2-space indent); NaN and infinities are refused, not written.
    """
    try:
        return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except ValueError as error:
        where = _non_finite(obj)
        if where is None:
            raise
        raise NonFiniteJSONError(
            f"{name}: refusing to write a non-finite number at {where} (no JSON reader "
            "accepts NaN or Infinity)"
        ) from error


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as canonical JSON atomically (NonFiniteJSONError naming the file for NaN or infinity)."""
    atomic_write_text(path, dump_json(obj, str(path)))


class NotRegularFileError(OSError):
    """A path names a folder, FIFO, socket or device where a regular file is expected; `kind` says which."""

    def __init__(self, path: str | os.PathLike, kind: str):
        super().__init__(f"{path}: not a regular file (a {kind})")
        self.path, self.kind = Path(path), kind


_SPECIAL_KINDS = (
    (stat.S_ISDIR, "folder"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def check_regular_mode(path: str | os.PathLike, mode: int) -> None:
    """NotRegularFileError naming what `path` is, unless `mode` (its st_mode) is a regular file's."""
    if not stat.S_ISREG(mode):
        kind = next((kind for test, kind in _SPECIAL_KINDS if test(mode)), "special file")
        raise NotRegularFileError(path, kind)


def open_regular_file(path: str | os.PathLike) -> IO[bytes]:
    """Open `path` for binary reading only if it is a regular file, without blocking on a FIFO or device.

    Raises FileNotFoundError, NotRegularFileError, or the OSError of the open; callers turn these into their
    own errors, naming the file.
    """
    # O_NONBLOCK: opening a FIFO nobody writes to would otherwise wait forever; it is refused below.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ENXIO:  # a socket cannot be opened at all: say what it is, not the errno
            check_regular_mode(path, os.stat(path).st_mode)
        raise
    try:
        check_regular_mode(path, os.fstat(fd).st_mode)
    except NotRegularFileError:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_json_file(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Parse a JSON input file strictly; JSONFileError naming the file (and the field of a NaN) otherwise.

    Only a regular file is opened (a FIFO or device named like a JSON file would block or never end). NaN and
    Infinity, which Python's parser accepts but JSON does not, are refused with their location
    (`[3]['bbox'][1]`); so is nesting deeper than the parser can follow.
    """
    path = Path(path)
    try:
        handle = open_regular_file(path)
    except FileNotFoundError:
        raise JSONFileNotFoundError(f"{what} {path} does not exist") from None
    except NotRegularFileError as error:
        raise JSONFileError(f"{error}; expected a {what}") from None
    except OSError as error:
        raise JSONFileError(f"{path}: cannot be opened ({error.strerror})") from None
    with handle:
        data = handle.read()
    constants: list[str] = []

    def non_finite(name: str) -> float:
        constants.append(name)
        return float(name.replace("Infinity", "inf"))

    try:
        parsed = json.loads(data.decode("utf-8-sig"), parse_constant=non_finite)
    except UnicodeDecodeError as error:
        raise JSONFileError(f"{path}: not UTF-8 text ({error})") from None
    except json.JSONDecodeError as error:
        raise JSONFileError(f"{path}: not valid JSON ({error})") from None
    except RecursionError:
        raise JSONFileError(f"{path}: JSON nested too deeply to read (no {what} is so deep)") from None
    if constants:
        try:
            where = _non_finite(parsed)
        except RecursionError:
            where = None
        raise JSONFileError(
            f"{path}: {where or 'a value'} is {constants[0]}, which is not a JSON number (NaN and Infinity "
            "are not valid JSON)"
        )
    return parsed


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def safe_join(root: str | os.PathLike, relative: str, what: str = "image root") -> Path:
    """Join `relative` (e.g. a COCO `file_name`) under `root` for reading or writing; refuse names that
    escape.

    A name escapes when it is absolute, climbs out by its own `..` parts, or leads out through a symlink (the
    result is resolved as the OS would open it). `what` names the root in the error ("output folder", ...).
    Returns the resolved path.
    """
    root_path = Path(root).resolve()
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise ValueError(f"file name {relative!r} names no file under the {what} {root_path}")
    if os.path.isabs(relative):
        raise ValueError(
            f"file name {relative!r} is absolute; expected a path relative to the {what} {root_path}"
        )
    # Lexically first: a name that only stays inside because a symlinked folder bends `..` back in would land
    # outside when the same name is used under another root (an output folder mirrors the input's names).
    if posixpath.normpath(relative).split("/")[0] == "..":
        raise ValueError(f"file name {relative!r} escapes the {what} {root_path}")
    candidate = (root_path / relative).resolve()
    if candidate == root_path:
        raise ValueError(f"file name {relative!r} names the {what} {root_path} itself, not a file in it")
    if not _inside(candidate, root_path):
        raise ValueError(
            f"file name {relative!r} escapes the {what} {root_path} (it resolves to {candidate})"
        )
    return candidate


def output_stem(relative: str) -> str:
    """The output stem of an input's relative path: the normalised POSIX name, suffix kept.

    Outputs are `<stem><kind>` (`photo.jpg.png`, `photo.jpg_vis.png`, `frame.0001.jpg.npy`), so the map from
    inputs to outputs is injective: no two inputs
    (`x.jpg`/`x.png`, `frame.0001.jpg`/`frame.0002.jpg`, `a.jpg`/`a_vis.jpg`) share an output, and an output
    name never equals an input name. Raises ValueError for escaping names.
    """
    name = posixpath.normpath(relative.replace("\\", "/"))
    if not relative or os.path.isabs(name) or name in (".", "..") or name.startswith("../"):
        raise ValueError(
            f"file name {relative!r} is empty, absolute or escapes its folder; it cannot name an output"
        )
    return name


def check_unique_outputs(plan: Iterable[tuple[str, Iterable[str]]]) -> None:
    """Raise OutputLocationError when two inputs of `plan` ((input name, its output paths), ...) share an
    output."""
    owners: dict[str, str] = {}
    for source, outputs in plan:
        for output in outputs:
            key = posixpath.normpath(output)
            previous = owners.setdefault(key, source)
            if previous != source:
                raise OutputLocationError(
                    f"inputs {previous!r} and {source!r} would both be written to {key!r}; rename one of them"
                )


def check_output_location(
    output: str | os.PathLike,
    inputs: Mapping[str, str | os.PathLike | None],
    may_contain: Iterable[str | os.PathLike] = (),
    what: str = "output",
) -> Path:
    """Refuse an output folder or file that overlaps an input file or folder; return the resolved output.

    `inputs` maps what each input is ("image root", "annotation file") to its path (None: not given). Overlap:
    the output is an input, lies inside one, or contains one. `may_contain` lists input folders that may hold
    the output because the tool never lists it as input (an annotation folder inside the photo folder).
    """
    out = Path(output).resolve()
    allowed = {Path(p).resolve() for p in may_contain}
    for name, given in inputs.items():
        if given is None:
            continue
        source = Path(given).resolve()
        if out == source:
            relation = "they are the same"
        elif _inside(source, out):
            relation = f"the {name} lies inside the {what}, so outputs could replace it"
        elif _inside(out, source) and source not in allowed:
            relation = f"the {what} lies inside the {name}"
        else:
            continue
        raise OutputLocationError(
            f"{what} {out} overlaps the {name} {source} ({relation}); choose a separate "
            "location so that no input can be overwritten"
        )
    return out


def temp_target(name: str) -> str | None:
    """The target name that an `atomic_open` temp file name belongs to, or None for any other name."""
    match = _TEMP_NAME.match(name)
    return match["target"] if match else None


def remove_stale_temporaries(targets: Sequence[str | os.PathLike]) -> int:
    """Delete temp files that a killed run left next to `targets` (only `.<target name>.XXXXXXXX.tmp`); count
    them.

    Other files, a user's `.notes.abcdefgh.tmp` included, are never touched.
    """
    by_folder: dict[Path, set[str]] = {}
    for target in targets:
        target = Path(target)
        by_folder.setdefault(target.parent, set()).add(target.name)
    removed = 0
    for folder, names in by_folder.items():
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            if temp_target(entry.name) in names and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed += 1
    return removed
