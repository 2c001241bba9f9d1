"""LLaVA-1.5's vision-language projector: a 2-layer MLP with GELU ("mlp2x_gelu")."""

from __future__ import annotations

import torch
from torch import nn


class MLPProjector(nn.Module):
    """Linear(in -> out), GELU, Linear(out -> out): visual tokens [B, N, in] -> LLM tokens [B, N, out]."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_features, out_features)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, in] -> [B, N, out]."""
        return self.linear_2(self.act(self.linear_1(tokens)))
