"""Building blocks shared by the families."""

from __future__ import annotations

from torch import Tensor, nn


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1,
                 act: type[nn.Module] | None = nn.ReLU) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act(inplace=True) if act in (nn.ReLU, nn.SiLU, nn.Hardswish) else act())
        super().__init__(*layers)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int, gate: type[nn.Module] = nn.Sigmoid,
                 act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(reduced, channels, 1)
        self.gate = gate()

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 and EfficientNet's MBConv: expand 1x1, depthwise kxk, optional SE
    (``squeeze`` > 0: its bottleneck width), project 1x1."""

    def __init__(self, cin: int, cout: int, *, expand: int, k: int = 3, stride: int = 1, squeeze: int = 0,
                 act: type[nn.Module] = nn.ReLU, se_gate: type[nn.Module] = nn.Sigmoid,
                 se_act: type[nn.Module] | None = None) -> None:
        super().__init__()
        self.residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != cin:
            layers.append(ConvBNAct(cin, expand, 1, act=act))
        layers.append(ConvBNAct(expand, expand, k, stride, groups=expand, act=act))
        if squeeze:
            layers.append(SqueezeExcite(expand, squeeze, gate=se_gate, act=se_act or act))
        layers.append(ConvBNAct(expand, cout, 1, act=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class Classifier(nn.Sequential):
    """Global average pool, dropout, linear."""

    def __init__(self, cin: int, num_classes: int, dropout: float) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes))


def init_weights(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
