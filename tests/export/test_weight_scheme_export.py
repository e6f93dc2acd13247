"""The exported integer weights are the fake-quant weights, for every PACT weight scheme."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from qsal.export import export_onnx
from qsal.models import create_model
from qsal.quant import PACTConfig, quantize


@pytest.mark.parametrize("scheme, bits, storage", [("dorefa", 2, onnx.TensorProto.INT4),
                                                   ("dorefa", 4, onnx.TensorProto.INT8),
                                                   ("symmetric", 4, onnx.TensorProto.INT4)])
def test_pact_weights_are_stored_in_the_smallest_type_that_holds_their_codes(scheme, bits, storage, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(32, 1, 28, 28)
    cfg = PACTConfig(bits=bits, weight_scheme=scheme, num_calibration=32)
    q = quantize(create_model("small_cnn", 2, 1).eval(), cfg, x)
    path = export_onnx(q, tmp_path / "p.onnx", input_shape=(1, 28, 28), check_untrained=False)
    inits = {i.name: i for i in onnx.load(str(path)).graph.initializer}
    assert inits["fc1_weight_q"].data_type == storage  # DoReFa-4's odd codes span [-15, 15]
    codes, scale = q.fc1.integer_weight()
    assert np.array_equal(codes * scale[:, None], q.fc1.quantized_weight().detach().numpy())
    if storage == onnx.TensorProto.INT8:
        assert np.array_equal(numpy_helper.to_array(inits["fc1_weight_q"]), codes)
