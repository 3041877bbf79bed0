"""An example of your own network: a small VGG-style CNN that hps can search.

hps calls ``build`` with the knobs it names: ``num_classes`` and ``in_channels`` come from the data,
``width`` and ``dropout`` from the config (searchable), ``blocks`` from ``model.args`` (searchable
as ``model.args.blocks``). Any knob the builder does not name cannot be set or searched.
"""

from torch import nn


def build(num_classes: int, in_channels: int, width: float = 1.0, dropout: float = 0.0, blocks: int = 3) -> nn.Module:
    layers: list[nn.Module] = []
    cin, c = in_channels, max(8, round(32 * width))
    for _ in range(blocks):
        layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                   nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        cin, c = c, 2 * c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes))
