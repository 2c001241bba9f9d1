"""One prepared GPU run at SD2 size: Lotus-D images/s and SDPose persons/s per precision, compile, VAE.

Random SD2-base weights from the shipped configs (nothing to download), CUDA, SDPA attention, channels-last,
fp16 and bf16, torch.compile of the UNet (mode "reduce-overhead") on and off, TAESD on and off. Rows run
cheapest first; compiled rows that would overrun the time budget are listed as skipped, so the run ends in
time whatever the compile times. `dry_run` builds everything at tiny sizes on the CPU and runs each row once.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.benchmarks.sd2 import SD2Parts, build_sd2, cpu_name, sdpose_predictor
from zoo.benchmarks.timing import best_of

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _header(device: str, dry_run: bool) -> str:
    import diffusers
    import transformers

    if device == "cuda":
        name = torch.cuda.get_device_name()
        versions = f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    else:
        name, versions = f"CPU {cpu_name()}", "no CUDA"
    return (
        f"{'DRY RUN (tiny sizes, CPU, one iteration; numbers mean nothing) - ' if dry_run else ''}"
        f"{name}; torch {torch.__version__}, {versions}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}, Python {platform.python_version()}"
    )


def _prepare(parts: SD2Parts, device: str, dtype: torch.dtype, channels_last: bool) -> None:
    """Move and cast the shared parts; channels-last memory format on request."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for module in (parts.vae, parts.unet_d, parts.taesd):
        module.to(device=device, dtype=dtype, memory_format=memory_format)


def run(
    out: str | Path = "outputs/benchmark_gpu.md",
    resolution: int = 768,
    batches: tuple[int, ...] = (1, 8),
    pose_crop: tuple[int, int] = (768, 1024),
    pose_batch: int = 8,
    repeats: int = 5,
    budget_s: float = 270.0,
    dry_run: bool = False,
) -> list[dict[str, Any]]:
    """Run every row that fits `budget_s` seconds (build and compile included), write the table to `out`."""
    from zoo.inference.lotus import LotusPredictor

    started = time.perf_counter()
    device = "cpu" if dry_run else "cuda"
    if not dry_run and not torch.cuda.is_available():
        raise RuntimeError("the gpu benchmark needs CUDA; on a CPU machine run it with --dry-run")
    if dry_run:
        resolution, batches, pose_crop, pose_batch, repeats = 64, (1, 2), (48, 64), 2, 1
    parts = build_sd2(dry_run)
    empty = parts.empty_prompt_embeds.to(device)
    parts.empty_prompt_embeds = empty
    backbone = parts.backbone(parts.unet_d)
    predictor = LotusPredictor(backbone, "d", "depth")
    generator = torch.Generator().manual_seed(0)
    images = {
        batch: list(torch.rand(batch, 3, resolution, resolution, generator=generator)) for batch in batches
    }
    rows: list[dict[str, Any]] = []

    def lotus_row(
        dtype: str, compiled: str, vae: str, channels_last: bool = True, batches: tuple[int, ...] = batches
    ) -> None:
        backbone.use_tiny_autoencoder(parts.taesd if vae == "tiny" else None, vae)
        for batch in batches:
            row = {
                "model": "Lotus-D",
                "dtype": dtype,
                "compile": compiled,
                "autoencoder": vae,
                "channels_last": channels_last,
                "batch": batch,
            }
            seconds = best_of(
                lambda batch=batch: predictor(
                    images[batch], processing_resolution=resolution, batch_size=batch, output_type="pt"
                ),
                repeats,
            )
            rows.append({**row, "rate": batch / seconds, "unit": "images/s"})

    for dtype in DTYPES:
        _prepare(parts, device, DTYPES[dtype], channels_last=True)
        backbone.configure(autocast_dtype=DTYPES[dtype], attention="sdpa")
        for vae in ("full", "tiny"):
            lotus_row(dtype, "", vae)
    # Channels-last off once, so its effect is measured rather than assumed.
    _prepare(parts, device, torch.float16, channels_last=False)
    backbone.configure(autocast_dtype=torch.float16, attention="sdpa")
    lotus_row("fp16", "", "full", channels_last=False)
    _pose_rows(parts, pose_crop, pose_batch, repeats, device, rows)

    eager_unet, compile_seconds = backbone.unet, 60.0  # a first guess of one SD2 UNet compile on a GPU
    # Dry runs trace with dynamo only (no inductor code generation), so the compile path runs in seconds.
    options = {"backend": "eager"} if dry_run else {"mode": "reduce-overhead"}
    compiled = "dynamo only (dry run)" if dry_run else "reduce-overhead"
    # A dry run traces once (first dtype and batch): dynamo tracing is most of a dry run's time.
    for dtype in list(DTYPES)[:1] if dry_run else DTYPES:
        _prepare(parts, device, DTYPES[dtype], channels_last=True)
        backbone.configure(autocast_dtype=DTYPES[dtype], attention="sdpa")
        backbone.unet = torch.compile(eager_unet, dynamic=False, **options)
        for batch in batches[:1] if dry_run else batches:
            left = budget_s - (time.perf_counter() - started)
            if (
                left < 2 * compile_seconds
            ):  # each new shape or dtype compiles anew: start none that cannot end
                rows.extend(
                    {
                        "model": "Lotus-D",
                        "dtype": dtype,
                        "compile": compiled,
                        "autoencoder": vae,
                        "channels_last": True,
                        "batch": batch,
                        "rate": float("nan"),
                        "unit": f"skipped: {left:.0f} s of the time budget left",
                    }
                    for vae in ("full", "tiny")
                )
                continue
            start = time.perf_counter()
            predictor(
                images[batch][:batch], processing_resolution=resolution, batch_size=batch, output_type="pt"
            )
            compile_seconds = time.perf_counter() - start
            lotus_row(dtype, compiled, "full", batches=(batch,))
            lotus_row(dtype, compiled, "tiny", batches=(batch,))
        backbone.unet = eager_unet
    backbone.use_tiny_autoencoder(None, "full")
    return _write(rows, out, _header(device, dry_run), resolution, pose_crop, time.perf_counter() - started)


def _pose_rows(
    parts: SD2Parts,
    pose_crop: tuple[int, int],
    pose_batch: int,
    repeats: int,
    device: str,
    rows: list[dict[str, Any]],
) -> None:
    """SDPose persons/s, `pose_batch` persons per call, per dtype and encoder (flip test off; on once)."""
    pose = sdpose_predictor(parts, pose_crop, device)
    backbone = pose.model.backbone
    photo = (np.random.default_rng(0).random((pose_crop[1], pose_crop[0], 3)) * 255).astype(np.uint8)
    boxes = [
        np.tile(np.array([[0, 0, pose_crop[0] - 1, pose_crop[1] - 1]], dtype=np.float32), (pose_batch, 1))
    ]
    for dtype in DTYPES:
        _prepare(parts, device, DTYPES[dtype], channels_last=True)
        backbone.configure(autocast_dtype=DTYPES[dtype], attention="sdpa")
        for vae, flip in (("full", False), ("tiny", False), ("full", True)):
            backbone.use_tiny_autoencoder(parts.taesd if vae == "tiny" else None, vae)
            seconds = best_of(
                lambda flip=flip: pose([photo], boxes=boxes, flip_test=flip, batch_size=pose_batch), repeats
            )
            rows.append(
                {
                    "model": f"SDPose{' flip test' if flip else ''}",
                    "dtype": dtype,
                    "compile": "",
                    "autoencoder": vae,
                    "channels_last": True,
                    "batch": pose_batch,
                    "rate": pose_batch / seconds,
                    "unit": "persons/s",
                }
            )
    backbone.use_tiny_autoencoder(None, "full")


def _write(
    rows: list[dict[str, Any]],
    out: str | Path,
    header: str,
    resolution: int,
    pose_crop: tuple[int, int],
    wall: float,
) -> list[dict[str, Any]]:
    lines = [
        header,
        "",
        f"Lotus-D at {resolution}x{resolution}, SDPose crops {pose_crop[1]}x{pose_crop[0]} (h x w); SDPA "
        f"attention; best of the timed calls after a warm-up (which includes compilation); run {wall:.0f} s",
        "",
        "| model | dtype | torch.compile | autoencoder | channels-last | batch | rate |",
        "| --- | --- | --- | --- | --- | ---: | ---: |",
    ]
    for row in rows:
        rate = f"{row['rate']:.2f} {row['unit']}" if np.isfinite(row["rate"]) else row["unit"]
        lines.append(
            f"| {row['model']} | {row['dtype']} | {row['compile'] or 'off'} | "
            f"{'TAESD' if row['autoencoder'] == 'tiny' else 'VAE'} | "
            f"{'on' if row['channels_last'] else 'off'} | {row['batch']} | {rate} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    return rows


__all__ = ["DTYPES", "run"]
