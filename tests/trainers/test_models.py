import pytest
import torch

from hps.trainers import create_model, list_models, round_channels
from hps.trainers.models import round_repeats

FAMILIES = ["airnet", "branchnet", "efficientnet_b0", "mobilenet_v1", "mobilenet_v2", "mobilenet_v3", "rescnn", "resnet18"]


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_every_family_is_registered() -> None:
    assert list_models() == FAMILIES


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("classes", [10, 100])
def test_family_builds_and_grows_with_width(name: str, classes: int) -> None:
    counts = []
    for width in (0.25, 0.5, 1.0):
        model = create_model(name, num_classes=classes, width=width).eval()
        with torch.no_grad():
            out = model(torch.randn(2, 3, 32, 32))
        assert out.shape == (2, classes)
        assert torch.isfinite(out).all()
        counts.append(params(model))
    assert counts[0] < counts[1] < counts[2]


@pytest.mark.parametrize("name", FAMILIES)
def test_depth_and_dropout_knobs(name: str) -> None:
    shallow, deep = create_model(name, depth=0.5), create_model(name, depth=2.0)
    assert params(shallow) < params(deep)
    model = create_model(name, dropout=0.3)
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


def test_resnet18_matches_the_cifar_reference() -> None:
    assert params(create_model("resnet18")) == 11_173_962  # the CIFAR ResNet-18 everyone quotes
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in create_model("resnet18").modules())


def test_round_channels() -> None:
    assert round_channels(64, 1.0) == 64
    assert round_channels(64, 0.65) == 40  # 41.6 -> nearest multiple of 8
    assert round_channels(64, 0.01) == 8  # never below the divisor
    assert all(round_channels(c, w) % 8 == 0 for c in (16, 24, 96, 1280) for w in (0.1, 0.33, 1.7))
    assert all(round_channels(c, w) >= 0.9 * c * w for c in (16, 24, 96) for w in (0.3, 0.77, 1.3))
    assert round_repeats(3, 0.1) == 1 and round_repeats(4, 1.5) == 6


def test_unknown_model_and_bad_knobs() -> None:
    with pytest.raises(ValueError, match=r"model\.name 'vgg' is not allowed; choose one of airnet"):
        create_model("vgg")
    with pytest.raises(ValueError, match="width and depth must be > 0"):
        create_model("resnet18", width=0)


def test_channel_divisor_one_builds_exact_counts() -> None:
    """Report 001's ResNet-18 at 42/84/168/336 (42-channel stem) is width 42/64 at divisor 1; the
    default divisor 8 cannot express it (width 0.65: 40/80/168/336; 42/64: 40/88/168/336)."""
    exact = create_model("resnet18", width=42 / 64, channel_divisor=1)
    assert [exact.stem[0].out_channels] + [s[0].conv1[0].out_channels for s in exact.stages] == [42, 42, 84, 168, 336]
    assert sum(p.numel() for p in exact.parameters()) == 4_815_940
    for width, chans in ((42 / 64, [40, 88, 168, 336]), (0.65, [40, 80, 168, 336])):
        rounded = create_model("resnet18", width=width)
        assert [s[0].conv1[0].out_channels for s in rounded.stages] == chans
    assert round_channels(42, 1.0) == 40 and round_channels(42, 1.0, divisor=1) == 42  # explicit divisor wins
    with pytest.raises(ValueError, match="channel_divisor must be one of"):
        create_model("resnet18", channel_divisor=3)


@pytest.mark.parametrize("name", list_models())
def test_every_family_takes_the_divisor(name: str) -> None:
    fine = sum(p.numel() for p in create_model(name, width=0.3, channel_divisor=1).parameters())
    coarse = sum(p.numel() for p in create_model(name, width=0.3).parameters())
    assert fine != coarse or name == "airnet"  # 0.3 x the standard channels is no multiple of 8


def test_mobilenet_v3_has_report_002s_se() -> None:
    """Report 002: sigmoid SE gates, block 4 squeezed to 18. Its other squeezes are not stated
    (hps: expand / 4 to a multiple of 8). Params: 1,042,326 against about 976k implied by the
    report's 3,814 kB. The 6.8% gap is stated in the seed and README. The bound below pins it, so
    a change that widens it fails. MACs: within 0.5% of the report's 11,776,320. The convolutions
    the report states fix all but SE (1x1, about 3% of MACs), so a larger gap is a table error."""
    from hps.trainers.meter import count_macs
    from hps.trainers.models._layers import SqueezeExcite

    model = create_model("mobilenet_v3", num_classes=100)
    se = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
    assert [m.fc1.out_channels for m in se] == [18, 64, 64, 120, 168]
    assert all(isinstance(m.gate, torch.nn.Sigmoid) and isinstance(m.act, torch.nn.ReLU) for m in se)
    assert params(model) == 1_042_326 and 0 < params(model) / 976_384 - 1 < 0.07
    macs = count_macs(model, "cpu")[0]
    assert macs == 11_823_104 and abs(macs / 11_776_320 - 1) < 0.005


def test_branchnet_is_report_003s_network() -> None:
    """Report 003: >= 4.2M params in the trunk (stem and stages), under its 5M budget in all; five
    projection heads concatenated to 256 features; at 128 px the last stage ends at 4x4."""
    model = create_model("branchnet").eval()
    trunk = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("stem.", "stages.")))
    assert trunk == 4_619_072 >= 4_200_000 and params(model) == 4_782_410 < 5_000_000
    assert [h[0][0].out_channels for h in model.heads] == [32, 32, 64, 64, 64]
    assert model.mlp[0].in_features == 256 and model.mlp[-1].out_features == 10
    assert {(c.kernel_size, c.out_channels) for c in (model.stages[2].blocks[0].b3, model.stages[2].blocks[0].b5)} \
        == {((3, 3), 64), ((5, 5), 64)}
    sides: list[int] = []
    model.stages[-1].register_forward_hook(lambda _m, _i, out: sides.append(out.shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 128))
    assert sides == [4]


def test_branchnet_stages_sum_densely() -> None:
    """x_{k+1} = f_k(x_k) + x_0 + ... + x_k: with f_k = k + 1 and x_0 = 0 the outputs are 1, 3, 7
    (a plain residual chain would give 1, 3, 6)."""
    from hps.trainers.models.branchnet import DenseSumStage

    class Const(torch.nn.Module):
        def __init__(self, v: float) -> None:
            super().__init__()
            self.v = v

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full_like(x, self.v)

    stage = DenseSumStage(2, 2, 3)
    stage.entry, stage.pool = torch.nn.Identity(), torch.nn.Identity()
    stage.blocks = torch.nn.ModuleList(Const(k + 1) for k in range(3))
    assert stage(torch.zeros(1, 2, 2, 2)).unique().tolist() == [7.0]
