"""MobileNet V1 (report 004), V2, and a small V3 for 32x32 inputs (report 002)."""

from __future__ import annotations

from torch import Tensor, nn

from hps.trainers.models._layers import Classifier, ConvBNAct, InvertedResidual, init_weights
from hps.trainers.models._registry import register_model, round_channels, round_repeats


class _Net(nn.Module):
    def __init__(self, features: nn.Sequential, cout: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.features = features
        self.head = Classifier(cout, num_classes, dropout)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


# (out channels, stride, repeats): the ImageNet layout with the stem at stride 1 for 32x32.
_V1 = [(64, 1, 1), (128, 2, 1), (128, 1, 1), (256, 2, 1), (256, 1, 1), (512, 2, 1), (512, 1, 5),
       (1024, 2, 1), (1024, 1, 1)]


@register_model("MobileNetV1 depthwise-separable net, stride-1 stem for 32x32 (report 004)")
def mobilenet_v1(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, depth: float = 1.0,
           dropout: float = 0.0) -> nn.Module:
    cin = round_channels(32, width)
    layers: list[nn.Module] = [ConvBNAct(in_channels, cin, 3)]
    for c, s, n in _V1:
        cout = round_channels(c, width)
        for j in range(round_repeats(n, depth)):
            layers += [ConvBNAct(cin, cin, 3, s if j == 0 else 1, groups=cin), ConvBNAct(cin, cout, 1)]
            cin = cout
    return _Net(nn.Sequential(*layers), cin, num_classes, dropout)


# (expand ratio, out channels, repeats, stride): CIFAR strides (first two stages at stride 1).
_V2 = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


@register_model("MobileNetV2 inverted residuals with CIFAR strides, 1280-wide head")
def mobilenet_v2(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, depth: float = 1.0,
           dropout: float = 0.0) -> nn.Module:
    cin = round_channels(32, width)
    layers: list[nn.Module] = [ConvBNAct(in_channels, cin, 3, act=nn.ReLU6)]
    for t, c, n, s in _V2:
        cout = round_channels(c, width)
        for j in range(round_repeats(n, depth)):
            layers.append(InvertedResidual(cin, cout, expand=cin * t, stride=s if j == 0 else 1, act=nn.ReLU6))
            cin = cout
    head = round_channels(1280, max(1.0, width))
    layers.append(ConvBNAct(cin, head, 1, act=nn.ReLU6))
    return _Net(nn.Sequential(*layers), head, num_classes, dropout)


# Report 002's block table: (kernel, expand, out, SE squeeze (0: no SE), hard-swish, stride); stem 16
# at stride 1. SE gates with a sigmoid (the report's) around a ReLU. Block 4's squeeze, 18, is the
# report's; blocks 5-8's are not given there and take MobileNetV3's rule (expand / 4 to a multiple of 8).
_V3 = [(3, 16, 16, 0, False, 1), (3, 64, 24, 0, False, 2), (3, 96, 24, 0, False, 1),
       (5, 96, 40, 18, True, 2), (5, 240, 40, 64, True, 1), (5, 240, 80, 64, True, 2),
       (3, 480, 112, 120, True, 1), (5, 672, 160, 168, True, 2)]


@register_model("MobileNetV3 style for 32x32: report 002's 8 blocks, sigmoid SE + hard-swish later, 960 head")
def mobilenet_v3(num_classes: int = 10, in_channels: int = 3, width: float = 1.0, depth: float = 1.0,
           dropout: float = 0.0) -> nn.Module:
    cin = round_channels(16, width)
    layers: list[nn.Module] = [ConvBNAct(in_channels, cin, 3, act=nn.Hardswish)]
    for k, e, c, sq, hs, s in _V3:
        cout = round_channels(c, width)
        for j in range(round_repeats(1, depth)):
            layers.append(InvertedResidual(cin, cout, expand=round_channels(e, width), k=k,
                                           stride=s if j == 0 else 1, act=nn.Hardswish if hs else nn.ReLU,
                                           squeeze=round_channels(sq, width, divisor=1) if sq else 0,
                                           se_act=nn.ReLU))
            cin = cout
    head = round_channels(960, width)
    layers.append(ConvBNAct(cin, head, 1, act=nn.Hardswish))
    return _Net(nn.Sequential(*layers), head, num_classes, dropout)
