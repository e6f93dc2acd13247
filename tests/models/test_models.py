import pytest
import torch

from qsal.errors import QsalError
from qsal.models import count_macs, count_parameters, create_model, list_models


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32)])
def test_every_model_runs_forward_and_backward(name, in_channels, size):
    model = create_model(name, num_classes=5, in_channels=in_channels, image_size=size)
    out = model(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_parameter_counts_match_the_architectures():
    assert count_parameters(create_model("resnet18", 2, 1)) == 11_168_706  # MedMNIST ResNet-18 (28)
    assert count_parameters(create_model("resnet20", 10, 3, 32)) == 272_474  # ~0.27 M, He et al.
    assert count_parameters(create_model("small_cnn", 10, 1)) == 1_199_882  # PyTorch MNIST example net
    edge = count_parameters(create_model("edge_mbv2", 2, 1))
    assert edge < count_parameters(create_model("resnet18", 2, 1)) / 100


def test_macs_of_a_single_conv_by_hand():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 2))
    assert count_macs(net, 1, 28) == 4 * 26 * 26 * 9 + 2 * 4 * 26 * 26


def test_unknown_model_lists_choices():
    with pytest.raises(QsalError, match="unknown model 'vgg'.*resnet18"):
        create_model("vgg", 2)


def test_seeded_construction_is_reproducible_and_leaves_the_global_generator_alone():
    state = torch.get_rng_state()
    a, b = create_model("resnet20", 2, 1, seed=7), create_model("resnet20", 2, 1, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    c = create_model("resnet20", 2, 1, seed=8)
    assert not torch.equal(next(iter(a.parameters())), next(iter(c.parameters())))
