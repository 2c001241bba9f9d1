"""Keypoint heatmap codecs: UDP Gaussian encode/decode (mmpose semantics) and batched torch decoding."""

from zoo.codecs.batched import (
    decode_udp_batched,
    flip_heatmaps,
    heatmap_argmax,
    refine_dark_udp_batched,
)
from zoo.codecs.official import decode_udp_official
from zoo.codecs.udp_heatmap import EncodedHeatmaps, UDPHeatmap

__all__ = [
    "EncodedHeatmaps",
    "UDPHeatmap",
    "decode_udp_batched",
    "decode_udp_official",
    "flip_heatmaps",
    "heatmap_argmax",
    "refine_dark_udp_batched",
]
