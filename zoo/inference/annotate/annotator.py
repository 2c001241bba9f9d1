"""The Annotator: run pose, depth and normal predictors over a folder or a COCO image list, resumably and
atomically.

Why the outputs are byte-identical however often a run is killed and restarted:
- every file is written through a temp file and a rename (`zoo.utils.files.atomic_open`), and an image's
  record is written after its outputs, so a record means "all outputs of this image exist and are complete";
- batches are fixed chunks of the sorted image list, and a batch is always recomputed whole, because the
  models' float results depend (in the last bits) on which images share a batch; when a source changed or a
  failure is retried, the whole batch is rewritten, since its other images now share it with different pixels;
- the merged files are rebuilt from the records at the end, sorted, with rounded floats, as canonical JSON.

What it never does: write outside `out_dir`, read its own outputs as inputs, replace a file that it did not
write
(an existing file where a fresh output folder would put an output is refused before anything is written), or
let two inputs share an output name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader
from tqdm import tqdm

from zoo.data.images import ImageLoadError
from zoo.inference.annotate.adapters import AnnotateOptions, TaskAdapter, adapter_class, predictor_task
from zoo.inference.annotate.inputs import (
    DEFAULT_MAX_PIXELS,
    BatchDataset,
    ImageItem,
    LoadedBatch,
    failure_reason,
    list_inputs,
)
from zoo.inference.annotate.state import AnnotationError, RunState
from zoo.utils.files import (
    OutputLocationError,
    atomic_write_json,
    check_output_location,
    check_unique_outputs,
    safe_join,
)

FAILURES_FILE = "failures.json"


@dataclass
class AnnotationSummary:
    """What a run did: image counts, and how many image-model predictions were computed (not reused) now."""

    images: int
    annotated: int  # images every model annotated
    failed: int  # images with at least one failure
    computed: int | None = None  # image-model predictions run now (None: not counted)
    files: dict[str, str] = field(default_factory=dict)  # merged file name -> path


def check_options(
    batch_size: int = 1,
    processing_resolution: int | None = None,
    max_pixels: int | None = None,
    num_workers: int = 0,
) -> None:
    """Refuse option values no image could succeed with, before any model is loaded
    (ValueError naming the option)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if processing_resolution is not None and (
        isinstance(processing_resolution, bool)
        or not isinstance(processing_resolution, int)
        or processing_resolution < 0
        or processing_resolution % 8
    ):
        raise ValueError(
            "processing_resolution must be 0 (native size) or a positive multiple of 8 (the latent "
            f"factor); got {processing_resolution!r}"
        )
    if max_pixels is not None and (
        isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1
    ):
        raise ValueError(f"max_pixels must be a positive integer (or None for no limit); got {max_pixels!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative integer; got {num_workers!r}")


def check_locations(
    out_dir: str | os.PathLike, inputs: str | os.PathLike, image_root: str | os.PathLike | None = None
) -> None:
    """Refuse an output folder that overlaps the inputs (OutputLocationError naming both).

    A folder of images may hold the output folder (it is never listed); a COCO list's file and image root may
    not.
    """
    folder = Path(inputs).is_dir()
    root = image_root if image_root is not None else (None if folder else Path(inputs).parent)
    check_output_location(
        out_dir,
        {"input folder" if folder else "image list": inputs, "image root": root},
        may_contain=[inputs] if folder else [],
        what="output folder",
    )


class Annotator:
    """Annotate many images with any set of predictors (pose, depth, normals), batched, atomically and
    resumably.

    `predictors` maps output names to predictors (`zoo.load(...)`); a list is keyed by task ("pose", "depth",
    "normals"). `box_source` is "whole_image" or "hog", or `det_file` gives a COCO detection results file.
    Images above `max_pixels` are reported as too large (None: only the loader's decompression-bomb limit).
    `resume=False` forgets previous records (outputs are overwritten as images are redone).
    """

    def __init__(
        self,
        predictors: Mapping[str, Any] | Sequence[Any],
        out_dir: str | os.PathLike,
        batch_size: int = 4,
        processing_resolution: int | None = None,
        box_source: str = "whole_image",
        det_file: str | os.PathLike | None = None,
        flip_test: bool = False,
        visualize: bool = True,
        controlnet: bool = False,
        coco_annotations: bool = True,
        resume: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        num_workers: int = 0,
        progress: bool = True,
    ) -> None:
        check_options(batch_size, processing_resolution, max_pixels, num_workers)
        options = AnnotateOptions(
            processing_resolution, box_source, det_file, flip_test, visualize, controlnet, coco_annotations
        )
        if not isinstance(predictors, Mapping):
            kinds = [predictor_task(p) for p in predictors]
            if len(set(kinds)) != len(kinds):
                raise ValueError(f"two predictors share a task ({kinds}); pass a dict of names to predictors")
            predictors = dict(zip(kinds, predictors, strict=True))
        if not predictors:
            raise ValueError("no predictors given")
        self.out_dir = Path(out_dir)
        self.state = RunState(self.out_dir)
        self.batch_size, self.resume, self.max_pixels = batch_size, resume, max_pixels
        self.num_workers, self.progress = num_workers, progress
        self.tasks: dict[str, TaskAdapter] = {}
        for key, predictor in predictors.items():
            if not key or key.startswith(".") or "/" in key or "\\" in key or key == FAILURES_FILE:
                raise ValueError(f"predictor name {key!r} must be a plain folder name")
            # The predictor's family names its adapter in the registry (zoo/model_zoo.py).
            self.tasks[key] = adapter_class(predictor)(key, predictor, self.out_dir, options)
        self.computed = 0  # image-model predictions run by this process

    @property
    def predictors(self) -> dict[str, Any]:
        """The predictors by output name."""
        return {key: task.predictor for key, task in self.tasks.items()}

    # ------------------------------------------------------------------ inputs and plan
    def record_path(self, key: str, item: ImageItem) -> Path:
        """Where predictor `key`'s record of `item` lives (a success record: all its files are complete)."""
        return self.state.record_path(key, item)

    def _settings(self, key: str) -> dict[str, Any]:
        return {**self.tasks[key].settings(), "batch_size": self.batch_size, "max_pixels": self.max_pixels}

    def list_inputs(
        self, inputs: str | os.PathLike, image_root: str | os.PathLike | None = None
    ) -> list[ImageItem]:
        """The run's images (a folder, or a COCO image list under `image_root`); the output may not overlap
        them."""
        check_locations(self.out_dir, inputs, image_root)
        return list_inputs(inputs, image_root, exclude=self.out_dir)

    def batches(self, items: Sequence[ImageItem]) -> list[list[ImageItem]]:
        """The fixed batches: consecutive chunks of the sorted image list."""
        return [
            list(items[start : start + self.batch_size]) for start in range(0, len(items), self.batch_size)
        ]

    def outputs(self, items: Sequence[ImageItem]) -> list[Path]:
        """Every file the run writes outside its state, after checking that no two inputs share one."""
        plan = [
            (
                item.file_name,
                [f"{key}/{name}" for key, task in self.tasks.items() for name in task.outputs(item)],
            )
            for item in items
            if item.stem is not None
        ]
        merged = [FAILURES_FILE] + [
            f"{key}/{name}" for key, task in self.tasks.items() for name in task.merged_files()
        ]
        check_unique_outputs([*plan, *((f"the merged file {name}", [name]) for name in merged)])
        return [self.out_dir / name for _, names in plan for name in names] + [
            self.out_dir / name for name in merged
        ]

    def _check_foreign(self, targets: Sequence[Path]) -> None:
        """Refuse to start when a target folder leads out of `out_dir` or a file we would write is not ours.
        """
        owned = {key for key in self.tasks if self.state.has_settings(key)}
        for folder in sorted({target.parent for target in targets}):
            relative = folder.relative_to(self.out_dir).as_posix()
            if relative != ".":
                try:  # a symlinked output sub-folder could point at the inputs
                    safe_join(self.out_dir, relative, "output folder")
                except ValueError as error:
                    raise OutputLocationError(str(error)) from None
        for target in targets:
            key = target.relative_to(self.out_dir).parts[0]
            # A key with settings is a previous run of ours; failures.json is ours if any key is.
            if (key in owned or (key == FAILURES_FILE and owned)) or not os.path.lexists(target):
                continue
            raise OutputLocationError(
                f"{target} exists and was not written by an annotation run into "
                f"{self.out_dir}; refusing to replace it (choose an empty output folder)"
            )

    def prepare(self, items: Sequence[ImageItem]) -> list[list[ImageItem]]:
        """Check names and locations, lock the output folder, check or reset resume state, drop our stale temp
        files.

        Returns the batches to run. Call once per run, in one process, before any batch is processed.
        """
        targets = self.outputs(items)
        self.state.lock()
        self._check_foreign(targets)
        # Temp files of a killed run: nobody else writes here (we hold the lock); only our own names are
        # removed.
        self.state.sweep(targets)
        for key in self.tasks:
            self.state.check_settings(key, self._settings(key), self.resume)
        return [batch for batch in self.batches(items) if self.pending(batch)]

    def pending(self, batch: Sequence[ImageItem]) -> list[str]:
        """Names of the predictors that still lack a current, successful record for some image of `batch`."""
        return [key for key in self.tasks if not all(self.state.is_done(key, item) for item in batch)]

    def lock(self) -> None:
        """Take the output folder's lock (until `release` or process exit); fails if another run holds it."""
        self.state.lock()

    def release(self) -> None:
        """Release the output folder's lock."""
        self.state.release()

    # ------------------------------------------------------------------ work
    def process_batch(self, batch: LoadedBatch) -> int:
        """Run every predictor that still lacks records for this batch and write outputs, then records.

        The whole batch is predicted even if some of its images are done, so that each image is always
        computed in the same company (bit-identical floats). Images without a record are written; if a record
        is stale (source changed) or a failure, every image of the batch is rewritten. Returns the predictions
        run.
        """
        computed = 0
        for key in self.pending(batch.items):
            task = self.tasks[key]
            existing = [self.state.read_record(key, item) for item in batch.items]
            done = [self.state.is_done(key, item) for item in batch.items]
            rewrite = any(record is not None and not ok for record, ok in zip(existing, done, strict=True))
            records: dict[int, dict[str, Any]] = {
                i: {"file_name": item.file_name, "error": error}
                for i, (item, error) in enumerate(zip(batch.items, batch.errors, strict=True))
                if error is not None
            }
            good = [i for i in range(len(batch.items)) if i not in records]
            if good:
                write = [rewrite or not done[i] for i in good]
                payloads = self._predict(task, batch, good, write)
                computed += len(good)
                for i, payload in zip(good, payloads, strict=True):
                    height, width = batch.images[i].shape[:2]
                    records[i] = (
                        {"file_name": batch.items[i].file_name, **payload}
                        if "error" in payload
                        else {
                            "file_name": batch.items[i].file_name,
                            "height": height,
                            "width": width,
                            "source": batch.sources[i],
                            **payload,
                        }
                    )
            for i, item in enumerate(batch.items):
                # Unchanged records are left alone: a done image's record is never rewritten.
                if records[i] != existing[i]:
                    self.state.write_record(key, item, records[i])
        self.computed += computed
        return computed

    def _predict(
        self, task: TaskAdapter, batch: LoadedBatch, good: list[int], write: list[bool]
    ) -> list[dict[str, Any]]:
        """Payloads of the readable images; if the batch fails on bad input, each image alone, failures
        recorded."""
        items = [batch.items[i] for i in good]
        try:
            return task.predict([batch.images[i] for i in good], items, write)
        except (ValueError, ImageLoadError):
            # An input the model refuses (e.g. a size it cannot process). Other errors
            # (out of memory, a missing detector) would hit every image alike: they stop the run, which can
            # then be resumed.
            payloads = []
            for i, item, wanted in zip(good, items, write, strict=True):
                try:
                    payloads.extend(task.predict([batch.images[i]], [item], [wanted]))
                except (ValueError, ImageLoadError) as error:
                    payloads.append({"error": failure_reason(error, item.path)})
            return payloads

    def dataloader(self, batches: Sequence[Sequence[ImageItem]], sampler: Any = None) -> DataLoader:
        """A DataLoader that yields one LoadedBatch per fixed batch, decoded only when it is reached."""
        return DataLoader(
            BatchDataset(batches, self.max_pixels),
            batch_size=None,
            shuffle=False,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=_identity,
        )

    def merge(self, items: Sequence[ImageItem]) -> AnnotationSummary:
        """Build failures.json and each task's merged files from the records of all images."""
        failures: dict[tuple[str, str], set[str]] = {}
        done: dict[str, list[tuple[ImageItem, dict[str, Any]]]] = {key: [] for key in self.tasks}
        failed_images = set()
        for item in items:
            for key in self.tasks:
                record = self.state.read_record(key, item)
                if record is None:
                    raise AnnotationError(f"{item.file_name}: no record for {key!r}; the run is incomplete")
                if record.get("error") is not None:
                    failures.setdefault((item.file_name, record["error"]), set()).add(key)
                    failed_images.add(item.file_name)
                else:
                    done[key].append((item, record))
        files: dict[str, str] = {}
        for key, task in self.tasks.items():
            for name, path in task.merge(done[key]).items():
                files[f"{key}/{name}"] = str(path)
        # A file no model could read is one entry; a model's own refusal names the model.
        entries = []
        for (file_name, reason), keys in sorted(failures.items()):
            entry = {"file": file_name, "reason": reason}
            if len(keys) < len(self.tasks):
                entry["models"] = sorted(keys)
            entries.append(entry)
        atomic_write_json(self.out_dir / FAILURES_FILE, entries)
        files[FAILURES_FILE] = str(self.out_dir / FAILURES_FILE)
        return AnnotationSummary(
            images=len(items),
            annotated=len(items) - len(failed_images),
            failed=len(failed_images),
            files=files,
        )

    def run(
        self, inputs: str | os.PathLike, image_root: str | os.PathLike | None = None
    ) -> AnnotationSummary:
        """Annotate a folder (recursive) or a COCO image list in this process, with a progress bar."""
        items = self.list_inputs(inputs, image_root)
        try:
            todo = self.prepare(items)
            remaining = sum(len(batch) for batch in todo)
            before = self.computed
            with tqdm(
                total=len(items),
                initial=len(items) - remaining,
                unit="image",
                desc="annotate",
                disable=not self.progress,
            ) as bar:
                for batch in self.dataloader(todo):
                    self.process_batch(batch)
                    bar.update(len(batch.items))
                    # Let this batch's images go before the next is decoded: memory follows batch_size, not
                    # the input count (workers prefetch 2 batches each, the DataLoader default).
                    del batch
            summary = self.merge(items)
        finally:
            self.release()
        summary.computed = self.computed - before
        return summary


def _identity(batch: LoadedBatch) -> LoadedBatch:
    """DataLoader collate for already-batched items (module-level so that workers can pickle it)."""
    return batch
