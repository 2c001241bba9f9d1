"""Video frames from a folder of images (PoseTrack's JPEG frames) or a video file (mp4 through OpenCV).

Both sources index frames from 0 and return RGB uint8 arrays [H, W, 3]; errors name the file and the frame.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from zoo.data.images import load_rgb_uint8
from zoo.utils.files import NotRegularFileError, check_regular_mode

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")


class VideoDecodeError(ValueError):
    """A video file could not be opened or a frame of it could not be decoded; the message names both."""


@contextlib.contextmanager
def opencv_path(path: str | os.PathLike) -> Iterator[str]:
    """A name of `path` that OpenCV's video I/O can take, for reading or writing.

    OpenCV converts a path to UTF-8 and crashes the whole process (a segmentation fault, seen with 4.x) on a
    name that is not valid UTF-8 (`os.fsdecode` gives such names surrogate escapes): those are passed as an
    ASCII-named symlink to the absolute path in a private temporary folder, which opens (or creates) the same
    file.
    """
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        with tempfile.TemporaryDirectory(prefix="zoo_opencv_") as folder:
            link = Path(folder) / ("video" + "".join(c for c in Path(text).suffix if c.isascii()))
            os.symlink(os.path.abspath(text), link)
            yield str(link)
    else:
        yield text


def check_regular_file(path: Path, what: str) -> None:
    """Refuse a missing path or one that is not a regular file (a FIFO would block the decoder forever)."""
    try:
        check_regular_mode(path, os.stat(path).st_mode)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except NotRegularFileError as error:
        raise VideoDecodeError(f"{error}; only regular files are read") from None
    except OSError as error:
        raise VideoDecodeError(f"{path}: cannot be read ({error.strerror})") from None


class VideoFrames(ABC):
    """Random access to the frames of one video: `len()` frames, `read(i)` -> RGB uint8 [H, W, 3]."""

    path: Path

    @abstractmethod
    def __len__(self) -> int:
        """Number of frames."""

    @abstractmethod
    def read(self, index: int) -> np.ndarray:
        """Frame `index` (0-based) as RGB uint8 [H, W, 3]."""

    def _check_index(self, index: int) -> int:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.path}: frame {index} is out of range (the video has {len(self)} frames)")
        return int(index)


def _frame_order(folder: Path, files: list[Path]) -> list[Path]:
    """Frame files in video order: by number when every name is a number (PoseTrack's 000000.jpg, or 9.jpg
    before 10.jpg), else by name. Numbered frames must be consecutive: a gap or two files of one number would
    pair the wrong frames as neighbours, so it is an error naming the missing frame."""
    if not all(p.stem.isdigit() for p in files):
        return sorted(files)
    numbered = sorted(files, key=lambda p: (int(p.stem), p.name))
    for before, after in zip(numbered, numbered[1:], strict=False):
        step = int(after.stem) - int(before.stem)
        if step == 0:
            raise VideoDecodeError(f"{folder}: frames {before.name} and {after.name} have the same number")
        if step > 1:
            missing = f"{int(before.stem) + 1:0{len(before.stem)}d}"
            raise VideoDecodeError(
                f"{folder}: frame {missing} is missing (the numbered frames go from {before.name} to "
                f"{after.name}); a video needs every frame"
            )
    return numbered


class FolderFrames(VideoFrames):
    """Frames stored as image files in one folder, in sorted file-name order (PoseTrack: 000000.jpg, ...)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.path = Path(folder)
        if not self.path.is_dir():
            raise FileNotFoundError(f"frame folder {self.path} does not exist")
        # Hidden files (".000001.jpg", macOS "._000001.jpg") are no frames.
        files = [
            p
            for p in self.path.iterdir()
            if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".")
        ]
        if not files:
            raise FileNotFoundError(f"frame folder {self.path} holds no {'/'.join(FRAME_SUFFIXES)} frames")
        self.files = _frame_order(self.path, files)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, index: int) -> np.ndarray:
        return load_rgb_uint8(self.files[self._check_index(index)])


class Mp4Frames(VideoFrames):
    """Frames decoded from a video file with OpenCV, in order, seeking only when a request skips frames."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        check_regular_file(self.path, "video file")
        with opencv_path(self.path) as name:
            capture = cv2.VideoCapture(name)  # opens the file: the name may go afterwards
        if not capture.isOpened():
            raise VideoDecodeError(
                f"{self.path}: OpenCV cannot open this video (not a video file or no codec)"
            )
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        ok, first = capture.read()
        if not ok or first is None:
            capture.release()
            raise VideoDecodeError(f"{self.path}: OpenCV opened the file but cannot decode its first frame")
        self._capture = capture
        self._next = 1  # index of the frame the next capture.read() returns
        self._last: tuple[int, np.ndarray] = (0, first)
        self._count = max(count, 1)

    def __len__(self) -> int:
        return self._count

    def read(self, index: int) -> np.ndarray:
        index = self._check_index(index)
        if index == self._last[0]:
            bgr = self._last[1]
        else:
            if index != self._next:
                # Seeking is slower than reading on, so only seek when the request is not the next frame.
                self._capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, bgr = self._capture.read()
            if not ok or bgr is None:
                raise VideoDecodeError(f"{self.path}: cannot decode frame {index} of {len(self)}")
            self._next = index + 1
            self._last = (index, bgr)
        return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))

    def close(self) -> None:
        """Release the decoder."""
        self._capture.release()

    def __getstate__(self) -> dict:
        # DataLoader workers get a path, not a live decoder: each reopens the file on first use.
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])


def open_video(path: str | os.PathLike) -> VideoFrames:
    """Open a folder of frame images or a video file (mp4, avi, mov, mkv)."""
    path = Path(path)
    if path.is_dir():
        return FolderFrames(path)
    if path.suffix.lower() in VIDEO_SUFFIXES:
        return Mp4Frames(path)
    if not path.exists():
        raise FileNotFoundError(f"video {path} does not exist (expected a frame folder or a video file)")
    raise ValueError(f"{path}: not a frame folder or a video file ({'/'.join(VIDEO_SUFFIXES)})")


__all__ = [
    "FolderFrames",
    "Mp4Frames",
    "VideoDecodeError",
    "VideoFrames",
    "check_regular_file",
    "open_video",
    "opencv_path",
]
