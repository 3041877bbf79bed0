"""branchnet: report 003's network. Train it at 128 px (``data.image_size: 128``): five stages each
end in a max-pool, so 128 px ends at 4x4, the report's final AvgPool 4.

- stem: 7x7 conv to 64 channels, BN, SiLU;
- five stages at 64, 64, 128, 128, 128 channels (3, 3, 5, 5, 5 blocks), each ending in a 2x2 max-pool;
  a block runs a 3x3 and a 5x5 conv side by side (half the channels each), concatenates them,
  then BN and SiLU;
- dense-sum residuals: a block's output is added to the sum of every earlier output in its stage
  (DenseNet's connectivity, summed instead of concatenated);
- five projection heads, one per stage: 1x1 conv to half the stage's channels, BN, SiLU, global
  average pool. Concatenated, they give 32 + 32 + 64 + 64 + 64 = 256 features;
- MLP head 256-256-classes, with dropout ``d`` then ``2d/3`` (the report's 0.3 / 0.2).

The report gives this structure but not a full layer table. The block counts, the half-width
branches and the head widths are inferred: they fit the report's ">= 4.2M in the trunk" and its
5M budget (at width 1: 4.62M in the stem and stages, 4.78M in all). ``width`` scales every channel count and ``depth`` every
block count.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hps.trainers.models._layers import ConvBNAct, init_weights
from hps.trainers.models._registry import register_model, round_channels, round_repeats

# (channels, blocks) per stage.
_STAGES = [(64, 3), (64, 3), (128, 5), (128, 5), (128, 5)]


class Branches(nn.Module):
    """A 3x3 and a 5x5 conv side by side, concatenated, then BN and SiLU."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.b3 = nn.Conv2d(c, c // 2, 3, padding=1, bias=False)
        self.b5 = nn.Conv2d(c, c - c // 2, 5, padding=2, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(torch.cat([self.b3(x), self.b5(x)], 1)))


class DenseSumStage(nn.Module):
    """``x_{k+1} = f_k(x_k) + x_0 + ... + x_k``, then a 2x2 max-pool. The stage enters through a
    1x1 projection where the channel count changes, else through BN: the sums grow about 2x per
    block, and BN resets the scale so that it does not compound over stages (fp16 would overflow)."""

    def __init__(self, cin: int, c: int, blocks: int) -> None:
        super().__init__()
        self.entry: nn.Module = ConvBNAct(cin, c, 1, act=None) if cin != c else nn.BatchNorm2d(c)
        self.blocks = nn.ModuleList(Branches(c) for _ in range(blocks))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.entry(x)
        total = x
        for f in self.blocks:
            x = f(x) + total
            total = total + x
        return self.pool(x)


class BranchNet(nn.Module):
    def __init__(self, width: float, depth: float, num_classes: int, dropout: float, in_channels: int = 3) -> None:
        super().__init__()
        cin = round_channels(64, width)
        self.stem = ConvBNAct(in_channels, cin, 7, act=nn.SiLU)
        stages, heads, features = [], [], 0
        for c, n in _STAGES:
            c, proj = round_channels(c, width), round_channels(c * width / 2)
            stages.append(DenseSumStage(cin, c, round_repeats(n, depth)))
            heads.append(nn.Sequential(ConvBNAct(c, proj, 1, act=nn.SiLU), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
            cin, features = c, features + proj
        self.stages, self.heads = nn.ModuleList(stages), nn.ModuleList(heads)
        hidden = round_channels(256, width)
        self.mlp = nn.Sequential(nn.Linear(features, hidden), nn.SiLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.SiLU(inplace=True), nn.Dropout(dropout * 2 / 3),
                                 nn.Linear(hidden, num_classes))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        taps = []
        for stage, head in zip(self.stages, self.heads, strict=True):
            x = stage(x)
            taps.append(head(x))
        return self.mlp(torch.cat(taps, 1))


@register_model("Report 003's net: 3x3/5x5 branches, dense-sum residuals, 5 projection heads, MLP; 128 px")
def branchnet(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, depth: float = 1.0,
           dropout: float = 0.0) -> nn.Module:
    return BranchNet(width, depth, num_classes, dropout, in_channels)
