"""Benchmark: batched torch UDP decoding against a per-instance loop over mmpose's `UDPHeatmap.decode`."""

from __future__ import annotations

import numpy as np
import torch

from zoo.benchmarks.timing import best_of
from zoo.codecs import UDPHeatmap, decode_udp_batched
from zoo.utils.threads import pinned_threads


def _realistic_heatmaps(codec: UDPHeatmap, num_instances: int, num_keypoints: int, seed: int) -> np.ndarray:
    # Encoded ground truth plus noise looks like a trained head's output: one peak per channel.
    rng = np.random.default_rng(seed)
    width, height = codec.input_size
    heatmaps = []
    for _ in range(num_instances):
        keypoints = rng.uniform([0, 0], [width - 1, height - 1], size=(num_keypoints, 2))
        clean = codec.encode(keypoints).heatmaps
        heatmaps.append(clean + rng.normal(0, 0.02, clean.shape).astype(np.float32))
    return np.stack(heatmaps)  # [N, K, H, W]


def run(
    num_instances: int = 64,
    num_keypoints: int = 17,
    heatmap_size: tuple[int, int] = (48, 64),
    input_size: tuple[int, int] = (192, 256),
    sigma: float = 2.0,
    repeats: int = 5,
    device: str = "cpu",
    threads: int = 1,
    seed: int = 0,
    dry_run: bool = False,
) -> dict[str, float]:
    """Time batched decoding vs a per-instance mmpose loop on the same heatmaps; print a table; return
    timings.

    dry_run: 2 instances, one repeat (a test's smoke run).
    """
    if dry_run:
        num_instances, repeats = 2, 1
    # Both sides get the same CPU threads; on a loaded machine extra torch threads only add contention.
    with pinned_threads(threads):
        return _run(
            num_instances, num_keypoints, heatmap_size, input_size, sigma, repeats, device, threads, seed
        )


def _run(
    num_instances: int,
    num_keypoints: int,
    heatmap_size: tuple[int, int],
    input_size: tuple[int, int],
    sigma: float,
    repeats: int,
    device: str,
    threads: int,
    seed: int,
) -> dict[str, float]:
    codec = UDPHeatmap(input_size, heatmap_size, sigma=sigma)
    heatmaps = _realistic_heatmaps(codec, num_instances, num_keypoints, seed)  # [N, K, H, W]
    batch = torch.from_numpy(heatmaps).to(device)

    def batched() -> None:
        decode_udp_batched(batch, input_size, codec.blur_kernel_size)
        if batch.is_cuda:
            torch.cuda.synchronize()

    rows = [("zoo decode_udp_batched (torch, one call)", best_of(batched, repeats))]
    try:
        from mmpose.codecs import UDPHeatmap as MMPoseUDPHeatmap
    except ImportError:
        mmpose_time = float("nan")
    else:
        reference = MMPoseUDPHeatmap(
            input_size, heatmap_size, sigma=sigma, blur_kernel_size=codec.blur_kernel_size
        )

        def per_instance() -> None:
            for instance in heatmaps:
                reference.decode(instance)

        mmpose_time = best_of(per_instance, repeats)
    rows.append(("mmpose UDPHeatmap.decode (numpy, per-instance loop)", mmpose_time))

    batched_time = rows[0][1]
    title = (
        f"UDP decode of {num_instances} instances x {num_keypoints} keypoints, "
        f"{heatmap_size[0]}x{heatmap_size[1]} heatmaps, device={device}, {threads} CPU thread(s), "
        f"best of {repeats}"
    )
    print(title)
    print(f"| {'decoder':<52} | {'ms':>9} | {'instances/s':>12} | {'zoo speed-up':>12} |")
    print(f"| {'-' * 52} | {'-' * 9}:| {'-' * 12}:| {'-' * 12}:|")
    for name, seconds in rows:
        speedup = seconds / batched_time
        print(f"| {name:<52} | {seconds * 1e3:9.2f} | {num_instances / seconds:12.0f} | {speedup:11.1f}x |")
    return {"batched_s": batched_time, "mmpose_loop_s": mmpose_time, "speedup": mmpose_time / batched_time}


__all__ = ["run"]
