import subprocess
import sys

import numpy as np
import pytest
import torch

from qsal.errors import QsalError
from qsal.export import export_onnx
from qsal.models import create_model
from qsal.runtime import Runtime


def test_importing_the_runtime_does_not_import_torch():
    # nor scikit-learn / SciPy (qsal.metrics imported them eagerly): an edge install needs onnxruntime, numpy, Pillow
    code = ("import sys, qsal.runtime; heavy = [m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules]; "
            "assert not heavy, heavy; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_a_file_with_its_batch_size_fixed_for_an_edge_runtime_is_fed_and_timed_in_that_batch(tmp_path):
    """``make_dynamic_shape_fixed`` (NNAPI / CoreML preparation) pins the batch: 10 images through a batch-4 graph
    are three calls (the last filled up), with the logits of the dynamic file; bench times only batch 4."""
    import onnx

    from qsal.export.bench import bench_onnx

    torch.manual_seed(0)
    meta = {"data": {"name": "breastmnist", "task": "binary-class", "mean": [0.5], "std": [0.5]}}
    dynamic = export_onnx(create_model("small_cnn", 2, 1).eval(), tmp_path / "m.onnx", input_shape=(1, 28, 28),
                          meta=meta, check_untrained=False)
    model = onnx.load(str(dynamic))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_param")
    dim.dim_value = 4
    onnx.save(model, str(tmp_path / "fixed.onnx"))
    images = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    fixed = Runtime(tmp_path / "fixed.onnx", threads=1)
    assert fixed.fixed_batch == 4 and Runtime(dynamic).fixed_batch is None
    np.testing.assert_allclose(fixed.predict_logits(images), Runtime(dynamic).predict_logits(images), atol=1e-5)
    assert fixed.predict_logits(images[:4]).shape == (4, 2) and fixed.predict_logits(images[:0]).shape == (0, 2)
    timed = bench_onnx(tmp_path / "fixed.onnx", threads=(1,), seconds=0.05)
    assert timed["fixed_batch"] == 4 and [r["batch"] for r in timed["runs"]] == [4]


def test_bench_records_the_thread_count_that_ran_and_flags_more_than_the_usable_cores(tmp_path, monkeypatch, capsys):
    """--threads 0 is the cores this process may use, recorded as that number (onnxruntime's own default is one per
    physical core, os.cpu_count() counts withheld cores); a count above them is marked and noted as contention."""
    import json

    import qsal.provenance
    from qsal.cli import main

    meta = {"data": {"name": "breastmnist", "task": "binary-class", "mean": [0.5], "std": [0.5]}}
    path = export_onnx(create_model("small_cnn", 2, 1).eval(), tmp_path / "m.onnx", input_shape=(1, 28, 28),
                       meta=meta, check_untrained=False)
    monkeypatch.setattr(qsal.provenance, "usable_cpus", lambda: 1)
    capsys.readouterr()
    assert main(["bench", str(path), "--threads", "0", "2", "--seconds", "0.05", "--out", str(tmp_path / "b.json")]) == 0
    err = capsys.readouterr().err
    assert "note: 2 threads on 1 usable cores: those rows time contention" in err
    runs = json.loads((tmp_path / "b.json").read_text())["runs"]
    assert [(r["threads"], r.get("oversubscribed", False)) for r in runs] == [(1, False)] * 2 + [(2, True)] * 2


def test_runtime_preprocesses_uint8_like_training(tmp_path):
    torch.manual_seed(0)
    m = create_model("small_cnn", 2, 1).eval()
    meta = {"data": {"name": "breastmnist", "task": "binary-class", "mean": [0.5], "std": [0.5]}}
    path = export_onnx(m, tmp_path / "m.onnx", input_shape=(1, 28, 28), meta=meta, check_untrained=False)
    rt = Runtime(path, threads=1)
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    x = (torch.from_numpy(images).float()[:, None] / 255 - 0.5) / 0.5
    np.testing.assert_allclose(rt.predict_logits(images), m(x).detach().numpy(), atol=1e-4)
    assert rt.predict_logits(images[0]).shape == (1, 2)  # a single image
    probs = rt.predict_proba(images)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    empty = rt.predict_proba(images[:0])  # was numpy's "need at least one array to concatenate"
    assert empty.shape == (0, 2) and rt.predict_logits(images[:0]).dtype == np.float32
    with pytest.raises(QsalError, match=r"images have shape \(5, 32, 32\)"):
        rt.predict_logits(np.zeros((5, 32, 32), np.uint8))
    with pytest.raises(QsalError, match="must be uint8"):
        rt.predict_logits(images.astype(np.float32))


def test_corrupt_and_foreign_onnx_files(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not a model at all")
    with pytest.raises(QsalError, match="not a readable ONNX file"):
        Runtime(tmp_path / "junk.onnx")
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g), str(tmp_path / "foreign.onnx"))
    with pytest.raises(QsalError, match="not exported by qsal"):
        Runtime(tmp_path / "foreign.onnx")


def test_a_file_exported_without_its_normalisation_refuses_raw_pixels(tmp_path):
    # export_onnx without meta used to run on mean 0 / std 1: a BreastMNIST model then scored other numbers with exit 0
    path = export_onnx(create_model("small_cnn", 2, 1).eval(), tmp_path / "bare.onnx", input_shape=(1, 28, 28),
                       check_untrained=False)
    rt = Runtime(path)
    with pytest.raises(QsalError, match="records no input normalisation .*qsal export CHECKPOINT"):
        rt.predict_proba(np.zeros((2, 28, 28), np.uint8))
    assert rt.run_normalized(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 2)  # normalised input still runs
    nulls = export_onnx(create_model("small_cnn", 2, 1).eval(), tmp_path / "nulls.onnx", input_shape=(1, 28, 28),
                        meta={"data": {"mean": None, "std": None}}, check_untrained=False)  # null: NaN outputs before
    with pytest.raises(QsalError, match="records no input normalisation"):
        Runtime(nulls).predict_proba(np.zeros((2, 28, 28), np.uint8))


def test_bench_throughput_is_images_over_the_time_the_timed_calls_took():
    """img/s was batch / median latency: on a shared CPU, where the slow calls are the ones a median leaves out, an
    audit saw 9,006 img/s printed for a run that scored 2,700 images in its second."""
    from qsal.export.bench import _summary

    s = _summary([1.0, 1.0, 1.0, 10.0], batch=2)  # 8 images in 13 ms
    assert s["throughput_img_s"] == pytest.approx(8 / 0.013) and s["latency_ms_p50"] == 1.0
