"""Scale-out annotation: tools/annotate.py with 2 CPU processes (Lightning DDP, gloo) equals a single process.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_annotate import RESOLUTION, assert_same_tree, computed, model_dirs, predictors, run_tool  # noqa: F401

from zoo.inference.annotate import Annotator
from zoo.inference.distributed import ShardSampler


@pytest.mark.parametrize("length, world", [(0, 2), (1, 2), (5, 2), (6, 3), (7, 4)])
def test_shard_sampler_covers_each_index_once(length: int, world: int):
    shards = [list(ShardSampler(length, world, rank)) for rank in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(length))  # no index repeated or lost
    assert [len(ShardSampler(length, world, rank)) for rank in range(world)] == [len(s) for s in shards]


def test_two_process_ddp_equals_one_process(
    tmp_path: Path,
    predictors: dict,  # noqa: F811
    model_dirs: dict,  # noqa: F811
    realdata: Path,
):
    # Five images in batches of two: rank 0 gets two batches, rank 1 one; one file is broken.
    folder = tmp_path / "images"
    for image in sorted((realdata / "humanart").rglob("*.jpg")):
        target = folder / image.relative_to(realdata / "humanart")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    (folder / "broken.jpg").write_text("not an image")
    Image.open(realdata / "coco" / "000000000785.jpg").convert("L").resize((64, 48)).save(folder / "gray.png")
    args = [
        "--input",
        str(folder),
        "--models",
        str(model_dirs["pose"]),
        str(model_dirs["depth"]),
        "--batch-size",
        "2",
        "--processing-resolution",
        str(RESOLUTION),
        "--controlnet",
    ]

    result = run_tool(
        *args, "--out", str(tmp_path / "ddp"), "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert computed(result.stdout) == 4 * 2  # summed over both ranks: 4 readable images x 2 models

    Annotator(
        predictors,
        tmp_path / "single",
        batch_size=2,
        processing_resolution=RESOLUTION,
        controlnet=True,
        progress=False,
    ).run(folder)
    assert_same_tree(tmp_path / "ddp", tmp_path / "single")
