"""CIFAR ResNet-18: 3x3 stem, no max-pool, BasicBlocks [2, 2, 2, 2] at 64-128-256-512 (report 001)."""

from __future__ import annotations

from torch import Tensor, nn

from hps.trainers.models._layers import Classifier, ConvBNAct, init_weights
from hps.trainers.models._registry import register_model, round_channels, round_repeats


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(cin, cout, 3, stride, act=act)
        self.conv2 = ConvBNAct(cout, cout, 3, 1, act=None)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = ConvBNAct(cin, cout, 1, stride, act=None)
        self.act = act(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, channels: list[int], repeats: list[int], num_classes: int, dropout: float,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.stem = ConvBNAct(in_channels, channels[0], 3)
        stages: list[nn.Module] = []
        cin = channels[0]
        for i, (c, n) in enumerate(zip(channels, repeats, strict=True)):
            blocks = [BasicBlock(cin if j == 0 else c, c, 2 if (i > 0 and j == 0) else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = c
        self.stages = nn.Sequential(*stages)
        self.head = Classifier(cin, num_classes, dropout)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(x)))


@register_model("CIFAR ResNet-18 (3x3 stem, no max-pool), 11.2M params at width 1.0")
def resnet18(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, depth: float = 1.0,
           dropout: float = 0.0) -> nn.Module:
    channels = [round_channels(c, width) for c in (64, 128, 256, 512)]
    return ResNet(channels, [round_repeats(2, depth)] * 4, num_classes, dropout, in_channels)
