"""The Annotator's resume state under `<out>/.annotate/`: the folder lock, per-model settings and
done-records.

A done-record (`<key>/records/<sha256 of the file name>.json`, in 256 sub-folders) means: every output of this
image for model `key` exists and is complete. It carries the source's identity (size, mtime, content hash), so
that a source changed since is redone; records of failures are always retried.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, TextIO

from zoo.inference.annotate.inputs import ImageItem
from zoo.utils.files import atomic_write_json, remove_stale_temporaries, sha256_file, temp_target

STATE_DIR = ".annotate"


class AnnotationError(RuntimeError):
    """The run cannot start or finish (state from other settings, another run holding the folder, ...)."""


class RunState:
    """Lock, settings and records of one output folder."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.root = out_dir / STATE_DIR
        self._lock: TextIO | None = None

    def record_path(self, key: str, item: ImageItem) -> Path:
        """Where model `key`'s record of `item` lives."""
        # Named by a hash of the file name: any COCO file_name
        # (even one refused as escaping the root, or not valid UTF-8) gets a safe, distinct record;
        # two-character folders keep directories small for millions of images.
        digest = hashlib.sha256(os.fsencode(item.file_name)).hexdigest()
        return self.root / key / "records" / digest[:2] / f"{digest}.json"

    def read_record(self, key: str, item: ImageItem) -> dict[str, Any] | None:
        """The record of `item` for `key`, or None."""
        path = self.record_path(key, item)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def write_record(self, key: str, item: ImageItem, record: dict[str, Any]) -> None:
        """Write (atomically) the record of `item` for `key`."""
        atomic_write_json(self.record_path(key, item), record)

    def is_done(self, key: str, item: ImageItem) -> bool:
        """True when `item` has a successful record for `key` made from the source as it is now."""
        record = self.read_record(key, item)
        if record is None or record.get("error") is not None:
            return False  # failures are retried: the file may have been fixed, or the model changed its mind
        known = record.get("source")
        if known is None or item.path is None:
            return False
        try:
            stat = item.path.stat()
        except OSError:
            return False
        if (stat.st_size, stat.st_mtime_ns) == (known["size"], known["mtime_ns"]):
            return True
        # Size or time changed: the content decides (a copied or touched file keeps its outputs).
        return stat.st_size == known["size"] and sha256_file(item.path) == known["sha256"]

    def has_settings(self, key: str) -> bool:
        """Whether a previous run left settings (and so possibly outputs) for `key`."""
        return (self.root / key / "settings.json").is_file()

    def check_settings(self, key: str, wanted: dict[str, Any], resume: bool) -> None:
        """Refuse records made with other settings (unless not resuming: then forget them); store `wanted`."""
        settings_path = self.root / key / "settings.json"
        if not resume and (self.root / key).exists():
            shutil.rmtree(self.root / key)
        if settings_path.is_file():
            found = json.loads(settings_path.read_text(encoding="utf-8"))
            if found != wanted:
                changes = ", ".join(
                    f"{name}: {found.get(name)!r} -> {wanted.get(name)!r}"
                    for name in sorted(set(found) | set(wanted))
                    if found.get(name) != wanted.get(name)
                )
                raise AnnotationError(
                    f"{self.out_dir}: the records of {key!r} were made with other settings ({changes}); "
                    "resume with the same settings, or use resume=False / --no-resume to redo them"
                )
        else:
            atomic_write_json(settings_path, wanted)

    def sweep(self, targets: list[Path]) -> None:
        """Remove what a killed run left: temp files of `targets` and of the state, and unfinished staging."""
        remove_stale_temporaries(targets)
        # Everything under the state folder is ours.
        for directory, _, files in os.walk(self.root):
            for name in files:
                if temp_target(name) is not None:
                    Path(directory, name).unlink()
        for staging in self.root.glob("*/staging"):
            shutil.rmtree(staging)

    def lock(self) -> None:
        """Take the output folder's lock (until `release` or process exit); fails if another run holds it."""
        if self._lock is not None:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # Held open for the whole run; the OS drops the lock when the process ends, even by SIGKILL.
            handle = open(self.root / "lock", "w")  # noqa: SIM115
        except OSError as error:  # read-only, full, or not a folder: say so before any work
            raise AnnotationError(
                f"{self.out_dir}: cannot write the output folder ({error.strerror}); fix it and "
                "rerun to finish"
            ) from error
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AnnotationError(f"{self.out_dir} is being written by another annotation run") from None
        self._lock = handle

    def release(self) -> None:
        """Release the output folder's lock."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
