"""COCO-OOD merge and verification: shard records into split annotations and manifests, hashes checked."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from zoo.builders.coco_ood.planning import (
    SHARD_FILE,
    WORK_DIR,
    CocoOodError,
    load_coco,
)
from zoo.data.coco_ood import SplitPaths, split_paths
from zoo.utils.files import (
    atomic_write_json,
    atomic_write_text,
    remove_stale_temporaries,
    safe_join,
    sha256_bytes,
    sha256_file,
)


def split_annotations(
    coco: dict[str, Any], split: str, output_names: dict[int, str], ann_sha256: str
) -> dict[str, Any]:
    """The input annotations for `split`: `info.coco_ood` added, file names re-suffixed, nothing else."""
    result = dict(coco)  # keeps the input's key order
    result["info"] = {
        **coco.get("info", {}),
        "coco_ood": {"split": split, "source_annotations_sha256": ann_sha256},
    }
    result["images"] = [{**image, "file_name": output_names[image["id"]]} for image in coco["images"]]
    return result


def merge(ann: str | os.PathLike, out: str | os.PathLike) -> dict[str, SplitPaths]:
    """Combine the shard records under OUT/.work into each split's annotations and manifest; verify hashes."""
    ann, out = Path(ann), Path(out)
    work = out / WORK_DIR
    shard_files = {}
    for path in sorted(work.glob("shard-*-of-*.json")) if work.is_dir() else []:
        match = SHARD_FILE.match(path.name)
        if match:
            shard_files[(int(match[1]), int(match[2]))] = path
    counts = {count for _, count in shard_files}
    if not shard_files:
        raise CocoOodError(f"no shard records in {work}; run the build (with --shard i/n) first")
    if len(counts) > 1:
        raise CocoOodError(f"{work} holds records of different shard counts {sorted(counts)}; keep one set")
    count = counts.pop()
    missing = [index for index in range(count) if (index, count) not in shard_files]
    if missing:
        raise CocoOodError(
            f"shard record(s) {', '.join(f'{i}/{count}' for i in missing)} missing from {work}; "
            "run those shards (or copy their output folders here) before merging"
        )

    headers: dict[str, dict] = {}
    records: dict[str, dict[str, dict]] = {}
    for (index, _), path in sorted(shard_files.items()):
        for name, split in json.loads(path.read_text(encoding="utf-8"))["splits"].items():
            if headers.setdefault(name, split["header"]) != split["header"]:
                raise CocoOodError(
                    f"shard {index}/{count} built split {name!r} with different settings than "
                    "shard 0; rebuild it with the same styles, seed, format and library versions"
                )
            records.setdefault(name, {}).update(split["images"])

    coco = load_coco(ann)
    ann_sha256 = sha256_file(ann)
    splits = {}
    for name, header in headers.items():
        if header["source_annotations_sha256"] != ann_sha256:
            raise CocoOodError(f"split {name!r} was built from a different annotation file than {ann}")
        paths = split_paths(out, name)
        ordered = []
        for image in sorted(coco["images"], key=lambda item: item["id"]):
            record = records[name].get(str(image["id"]))
            if record is None:
                raise CocoOodError(
                    f"split {name!r} has no output for image id {image['id']}; rerun its shard"
                )
            target = safe_join(paths.images, record["file_name"])
            if not target.is_file() or sha256_file(target) != record["sha256"]:
                raise CocoOodError(
                    f"{target} is missing or does not match its recorded hash; rerun its shard"
                )
            ordered.append(record)
        remove_stale_temporaries([paths.annotations, paths.manifest])
        annotations = split_annotations(
            coco, name, {r["image_id"]: r["file_name"] for r in ordered}, ann_sha256
        )
        # Compact and in the input's key order, like the COCO files themselves (they reach tens of MB).
        text = json.dumps(annotations, ensure_ascii=False, separators=(",", ":")) + "\n"
        atomic_write_text(paths.annotations, text)
        atomic_write_json(
            paths.manifest,
            {"header": header, "annotations_sha256": sha256_bytes(text.encode("utf-8")), "images": ordered},
        )
        splits[name] = paths
    # Manifests now hold every record; the progress files would only make a sharded tree differ from a single
    # run.
    for path in shard_files.values():
        path.unlink()
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()
    return splits


def verify(out: str | os.PathLike, split: str) -> list[str]:
    """Check a finished split against its manifest; return the problems found (empty when it verifies)."""
    paths = split_paths(out, split)
    manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
    problems = []
    if sha256_file(paths.annotations) != manifest["annotations_sha256"]:
        problems.append(f"{paths.annotations}: hash differs from the manifest")
    for record in manifest["images"]:
        target = safe_join(paths.images, record["file_name"])
        if not target.is_file():
            problems.append(f"{target}: missing")
        elif sha256_file(target) != record["sha256"]:
            problems.append(f"{target}: hash differs from the manifest")
    return problems
