"""Top-down keypoint heatmap head (SimpleBaseline layout as in SDPose/Sapiens) and the keypoint MSE loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class HeatmapHead(nn.Module):
    """Deconvolutions (4x4, stride 2) then 1x1 convs, each with InstanceNorm + SiLU, then a 1x1 output conv.

    SDPose's head: one deconv and one 1x1 conv at the feature width (320 body / 640 whole-body), so the
    heatmaps are at twice the feature resolution (1/4 of the input for 1/8 UNet features). Attribute names and
    the non-affine InstanceNorm follow the released checkpoint (Sapiens' fork of mmpose's HeatmapHead), so its
    `decoder/decoder.safetensors` loads with strict=True.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        deconv_out_channels: Sequence[int] | None = None,
        conv_out_channels: Sequence[int] | None = None,
    ) -> None:
        """`deconv_out_channels` / `conv_out_channels` default to one layer of `in_channels` each (SDPose)."""
        super().__init__()
        deconv_out_channels = (in_channels,) if deconv_out_channels is None else tuple(deconv_out_channels)
        conv_out_channels = (in_channels,) if conv_out_channels is None else tuple(conv_out_channels)
        layers: list[nn.Module] = []
        channels = in_channels
        for width in deconv_out_channels:
            # kernel 4, stride 2, padding 1 doubles the size exactly; no bias because a norm follows.
            layers += [
                nn.ConvTranspose2d(channels, width, 4, stride=2, padding=1, bias=False),
                *_norm_act(width),
            ]
            channels = width
        self.deconv_layers = nn.Sequential(*layers) if layers else nn.Identity()
        layers = []
        for width in conv_out_channels:
            layers += [nn.Conv2d(channels, width, 1), *_norm_act(width)]
            channels = width
        self.conv_layers = nn.Sequential(*layers) if layers else nn.Identity()
        self.final_layer = nn.Conv2d(channels, out_channels, 1)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.upsample_factor = 2 ** len(deconv_out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """mmpose's init for this head: conv and deconv weights Normal(0, 0.001), biases 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(module.weight, std=0.001)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Features [B, C, h, w] -> heatmaps [B, K, h * 2^n, w * 2^n] (n deconvs)."""
        x = self.deconv_layers(features)  # [B, C', 2h, 2w]
        x = self.conv_layers(x)
        return self.final_layer(x)  # [B, K, 2h, 2w]


def _norm_act(channels: int) -> list[nn.Module]:
    # Sapiens' `use_silu` variant: InstanceNorm2d without affine parameters (none in the checkpoint) + SiLU.
    return [nn.InstanceNorm2d(channels), nn.SiLU()]


def keypoint_mse_loss(
    heatmaps: torch.Tensor,
    targets: torch.Tensor,
    keypoint_weights: torch.Tensor | None = None,
    loss_weight: float = 1.0,
) -> torch.Tensor:
    """mmpose's KeypointMSELoss: mean squared error over [B, K, H, W], each channel scaled by its weight
    [B, K]."""
    if heatmaps.shape != targets.shape:
        raise ValueError(f"heatmaps {tuple(heatmaps.shape)} and targets {tuple(targets.shape)} differ")
    error = (heatmaps.float() - targets.float()) ** 2  # [B, K, H, W]
    if keypoint_weights is not None:
        # use_target_weight=True: unlabelled (or out-of-heatmap) keypoints contribute zero but still count in
        # the mean.
        error = error * keypoint_weights.float()[..., None, None]
    return error.mean() * loss_weight
