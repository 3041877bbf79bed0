"""EfficientNet-B0 for 32x32 inputs: MBConv + squeeze-excitation, stride-1 stem (report 000)."""

from __future__ import annotations

from torch import Tensor, nn

from hps.trainers.models._layers import Classifier, ConvBNAct, InvertedResidual, init_weights
from hps.trainers.models._registry import register_model, round_channels, round_repeats

# (expand ratio, kernel, out channels, repeats, stride); the B0 table with the stem at stride 1.
_B0 = [(1, 3, 16, 1, 1), (6, 3, 24, 2, 2), (6, 5, 40, 2, 2), (6, 3, 80, 3, 2), (6, 5, 112, 3, 1),
       (6, 5, 192, 4, 2), (6, 3, 320, 1, 1)]


class EfficientNet(nn.Module):
    def __init__(self, width: float, depth: float, num_classes: int, dropout: float, in_channels: int = 3) -> None:
        super().__init__()
        cin = round_channels(32, width)
        layers: list[nn.Module] = [ConvBNAct(in_channels, cin, 3, act=nn.SiLU)]
        for t, k, c, n, s in _B0:
            cout = round_channels(c, width)
            for j in range(round_repeats(n, depth)):
                layers.append(InvertedResidual(cin, cout, expand=cin * t, k=k, stride=s if j == 0 else 1,
                                               squeeze=round_channels(cin / 4, divisor=1), act=nn.SiLU))
                cin = cout
        head = round_channels(1280, max(1.0, width))
        layers.append(ConvBNAct(cin, head, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.head = Classifier(head, num_classes, dropout)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


@register_model("EfficientNet-B0 (MBConv + SE, SiLU) with a stride-1 stem for 32x32 (report 000)")
def efficientnet_b0(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, depth: float = 1.0,
           dropout: float = 0.0) -> nn.Module:
    return EfficientNet(width, depth, num_classes, dropout, in_channels)
