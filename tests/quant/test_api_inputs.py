"""The Python API refuses bad input in one QsalError naming it, as the CLI does (found by a new-user audit:
before, a string skip was split into letters and the layer still quantized, a negative count raised numpy's
ValueError, NaN calibration quantized "successfully")."""

import pytest
import torch

from qsal.errors import QsalError
from qsal.models import create_model
from qsal.quant import PACTConfig, PTQConfig, QATConfig, WeightOnlyConfig, quantize
from qsal.quant.modules import QuantConv2d


def _model():
    return create_model("small_cnn", 2, 1).eval()


def test_a_lone_layer_name_is_one_name_and_unknown_names_are_refused():
    x = torch.randn(32, 1, 28, 28)
    q = quantize(_model(), PTQConfig(skip="conv2", num_calibration=32), calibration=x)
    assert not isinstance(q.get_submodule("conv2"), QuantConv2d) and isinstance(q.get_submodule("conv1"), QuantConv2d)
    with pytest.raises(QsalError, match=r"skip names \['bogus'\] that are not layers of this model"):
        quantize(_model(), PTQConfig(skip=["bogus"], num_calibration=32), calibration=x)
    with pytest.raises(QsalError, match="this model is already quantized"):
        quantize(q, PTQConfig(num_calibration=32), calibration=x)


@pytest.mark.parametrize("make,said", [
    (lambda: PTQConfig(num_calibration=-1), "num_calibration must be a whole number of images >= 1, got -1"),
    (lambda: QATConfig(num_calibration=0), "num_calibration must be a whole number"),
    (lambda: PACTConfig(num_calibration=2.5), "got 2.5"),
    (lambda: PACTConfig(alpha_init=-1.0), "alpha_init is PACT's starting clip, a finite number > 0"),
    (lambda: PACTConfig(alpha_init=float("nan")), "alpha_init"),
    (lambda: WeightOnlyConfig(skip=[1]), "skip must name layers (strings), got [1]"),
])
def test_configs_refuse_impossible_values(make, said):
    with pytest.raises(QsalError, match=said.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")):
        make()


@pytest.mark.parametrize("calibration,said", [
    (torch.full((32, 1, 28, 28), float("nan")), "hold NaN or infinite values"),
    (torch.randn(32, 3, 28, 28), r"the calibration images, shape \(32, 3, 28, 28\), do not fit this model"),
    (torch.zeros(32, 1, 28, 28, dtype=torch.uint8), "must be normalised float"),
])
def test_calibration_images_that_cannot_calibrate_are_refused(calibration, said):
    with pytest.raises(QsalError, match=said):
        quantize(_model(), PTQConfig(num_calibration=32), calibration=calibration)


def test_explain_and_evaluate_refuse_what_they_cannot_use(tiny_splits):
    from qsal.metrics import evaluate
    from qsal.saliency import explain

    model = _model()
    x = torch.randn(4, 1, 28, 28)
    with pytest.raises(QsalError, match="no images to explain"):
        explain(model, x[:0], method="gradient")
    with pytest.raises(QsalError, match="target names 2 classes for 4 images"):
        explain(model, x, method="gradient", target=torch.tensor([0, 1]))
    _, _, test = tiny_splits
    with pytest.raises(QsalError, match="evaluate needs an ImageSplit"):
        evaluate(model, None)
    with pytest.raises(QsalError, match="decision.positive_label must be a class id 0-1"):
        evaluate(model, test, decision={"positive_label": 5})
    with pytest.raises(QsalError, match="decision.operating_point.threshold must be a probability"):
        evaluate(model, test, decision={"positive_label": 0, "operating_point": {"threshold": 2.0}})
    with pytest.raises(QsalError, match="'decision' must be a mapping"):
        evaluate(model, test, decision="youden")


def test_skip_names_what_the_traced_graph_calls():
    from torch import nn

    class Net(nn.Module):  # fx traces into nn.Sequential: naming the container would skip nothing
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
            self.head = nn.Linear(4 * 26 * 26, 2)

        def forward(self, x):
            return self.head(self.block(x).flatten(1))

    x = torch.randn(16, 1, 28, 28)
    with pytest.raises(QsalError, match=r"skip names \['block'\] that are not layers of this model's graph; its "
                                        r"layers are block.0, block.1, head"):
        quantize(Net().eval(), PTQConfig(skip=("block",), num_calibration=16), calibration=x)
    q = quantize(Net().eval(), PTQConfig(skip=("block.0",), num_calibration=16), calibration=x)
    assert not isinstance(q.get_submodule("block.0"), QuantConv2d)


def test_the_number_of_calibration_images_used_is_recorded_not_the_upper_bound():
    """num_calibration is 'at most': 40 images given, 2000 asked. The model says 40 (the pipeline writes it to
    best.json, metrics.json and the card), where only 2000 was recorded before."""
    import torch

    from qsal.models import create_model
    from qsal.quant import PTQConfig, WeightOnlyConfig, quantize

    model = create_model("small_cnn", 2, 1)
    assert quantize(model, PTQConfig(num_calibration=2000), torch.randn(40, 1, 28, 28)).qsal_calibration_images == 40
    assert quantize(model, PTQConfig(num_calibration=16), torch.randn(40, 1, 28, 28)).qsal_calibration_images == 16
    assert quantize(model, WeightOnlyConfig(bits=4)).qsal_calibration_images == 0


@pytest.mark.parametrize("make,message", [
    (lambda: PTQConfig(per_channel="no"), "per_channel must be True or False, got 'no'"),
    (lambda: QATConfig(fold_bn="no"), "fold_bn must be True or False"),
    (lambda: PTQConfig(weight_bits=4.0), "weight_bits=4.0 is not a whole number"),
    (lambda: WeightOnlyConfig(bits=4.0), "bits=4.0 is not a whole number"),
    (lambda: PACTConfig(alpha_decay=-1.0), "alpha_decay (the L2 weight on each clip alpha) must be a finite number >= 0"),
    (lambda: PACTConfig(alpha_decay=float("nan")), "alpha_decay"),
    (lambda: PACTConfig(alpha_lr=float("inf")), "alpha_lr must be a finite number > 0"),
    (lambda: QATConfig(ema="x"), "ema (the range tracker's update weight) must be a number in (0, 1], got 'x'"),
    (lambda: QATConfig(freeze_bn_at=None), "freeze_bn_at is a fraction of the epochs"),
])
def test_a_config_refuses_a_value_of_the_wrong_type_by_name(make, message):
    """Accepted before: a string switch ran as True and was recorded as given, 4.0 bits labelled 'int4.0', a
    negative or NaN alpha decay trained, and a string ema was a TypeError traceback."""
    with pytest.raises(QsalError) as e:
        make()
    assert message in str(e.value)


def test_a_ptq_label_names_both_bit_widths_where_they_differ():
    """PTQConfig(weight_bits=8, act_bits=4) was labelled ptq-int8-minmax (its run folder and card name too)."""
    from qsal.quant import PTQConfig

    assert PTQConfig().label == "ptq-int8-minmax" and PTQConfig(weight_bits=4, act_bits=4).label == "ptq-int4-minmax"
    assert PTQConfig(weight_bits=8, act_bits=4, observer="mse").label == "ptq-w8a4-mse"
    with pytest.raises(QsalError, match="weight_bits='8' is not a whole number; use one of 2, 3"):
        PTQConfig(weight_bits="8")


def test_a_layer_the_user_froze_stays_frozen_after_quantization():
    model = _model()
    model.conv1.requires_grad_(False)
    for config in (QATConfig(), PACTConfig(bits=4)):
        q = quantize(model, config, calibration=torch.randn(32, 1, 28, 28))
        assert [p.requires_grad for p in q.conv1.parameters()] == [False, False]
        assert all(p.requires_grad for p in q.conv2.parameters())
