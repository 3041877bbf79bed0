"""airnet: the airbench94 network (KellerJordan/cifar10-airbench), the trainer's speed anchor.

Stem conv 2x2 to 24 channels, then three blocks of (conv, max-pool 2, BN, GELU, conv, BN, GELU)
at 64, 256, 256 channels, global max-pool and a bias-free linear head scaled by 1/9."""

from __future__ import annotations

from torch import Tensor, nn

from hps.trainers.models._registry import register_model, round_channels, round_repeats


class _ConvBN(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout, momentum=0.4),
                         nn.GELU())


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int, extra: int) -> None:
        convs = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2),
                 nn.BatchNorm2d(cout, momentum=0.4), nn.GELU()]
        convs += [m for _ in range(extra) for m in _ConvBN(cout, cout)]
        super().__init__(*convs)


class AirNet(nn.Module):
    def __init__(self, width: float, depth: float, num_classes: int, dropout: float, in_channels: int = 3) -> None:
        super().__init__()
        stem = round_channels(24, width)
        widths = [round_channels(c, width) for c in (64, 256, 256)]
        extra = round_repeats(1, depth)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 2, padding=0, bias=True), nn.GELU())
        blocks, cin = [], stem
        for c in widths:
            blocks.append(_Block(cin, c, extra))
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(cin, num_classes, bias=False)
        self.scale = 1 / 9

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.blocks(self.stem(x))).flatten(1)
        return self.fc(self.drop(x)) * self.scale


@register_model("airbench94-style fast net (conv-pool-BN-GELU blocks 64/256/256), the speed anchor")
def airnet(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, depth: float = 1.0,
           dropout: float = 0.0) -> nn.Module:
    return AirNet(width, depth, num_classes, dropout, in_channels)
