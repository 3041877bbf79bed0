"""A plain residual CNN at 32 px, a small relative of report 003's network (that one is
``branchnet``): 7x7 stem, residual stages at 64 and 128 channels with max-pools, pooled stage
outputs concatenated (dense style), SiLU, MLP head 256-256 with dropout."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hps.trainers.models._layers import ConvBNAct, init_weights
from hps.trainers.models._registry import register_model, round_channels, round_repeats
from hps.trainers.models.resnet import BasicBlock


class ResCNN(nn.Module):
    def __init__(self, width: float, depth: float, num_classes: int, dropout: float, in_channels: int = 3) -> None:
        super().__init__()
        c1, c2, hidden = (round_channels(c, width) for c in (64, 128, 256))
        n = round_repeats(4, depth)
        self.stem = ConvBNAct(in_channels, c1, 7, act=nn.SiLU)
        self.stage1 = nn.Sequential(*[BasicBlock(c1, c1, 1, act=nn.SiLU) for _ in range(n)], nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(BasicBlock(c1, c2, 1, act=nn.SiLU),
                                    *[BasicBlock(c2, c2, 1, act=nn.SiLU) for _ in range(n - 1)], nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Linear(c1 + c2, hidden), nn.SiLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(hidden, hidden), nn.SiLU(inplace=True), nn.Dropout(dropout * 2 / 3),
                                  nn.Linear(hidden, num_classes))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        s1 = self.stage1(self.stem(x))
        s2 = self.stage2(s1)
        return self.head(torch.cat([s1.mean((2, 3)), s2.mean((2, 3))], 1))


@register_model("Residual CNN at 32 px (7x7 stem, stages 64/128, dense-style concat, MLP head)")
def rescnn(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, depth: float = 1.0,
           dropout: float = 0.0) -> nn.Module:
    return ResCNN(width, depth, num_classes, dropout, in_channels)
