"""Model cards: Hugging Face metadata (YAML front matter) and the Mitchell et al. (2019) sections."""

import json

import numpy as np
import pytest
import torch
import yaml

from qsal.metrics import compute_metrics
from qsal.export import export_onnx
from qsal.export.card_storage import onnx_layer_storage
from qsal.export.model_card import hf_license, write_model_card
from qsal.models import count_parameters, create_model
from qsal.quant import PACTConfig, quantize

DATA = {"name": "breastmnist", "task": "binary-class", "labels": ["malignant", "normal, benign"], "mean": [0.5],
        "std": [0.5], "n_channels": 1, "image_size": 28, "license": "CC BY 4.0"}
HF_KEYS = {"license", "library_name", "pipeline_tag", "tags", "datasets", "metrics", "model-index"}


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture
def pact_card(tmp_path, tiny_splits):
    train = tiny_splits[0]
    model = quantize(create_model("small_cnn", 2, 1), PACTConfig(bits=4), calibration=train)
    qcfg = PACTConfig(bits=4).to_dict()
    path = export_onnx(model, tmp_path / "m.onnx", input_shape=(1, 28, 28),
                       meta={"data": DATA, "quant": qcfg}, check_untrained=False)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 156)
    logits = np.stack([-y * 2.0, y * 2.0], 1) + rng.normal(0, 1.5, (156, 2))
    artifact = compute_metrics(y, logits, "binary-class", n_bootstrap=200).to_dict()
    parent = compute_metrics(y, logits + rng.normal(0, 1.0, (156, 2)), "binary-class", n_bootstrap=0).to_dict()
    meta = {"dataset": DATA, "arch": {"name": "small_cnn", "num_classes": 2, "in_channels": 1, "image_size": 28},
            "quant": qcfg, "parent_checkpoint": "runs/fp32/best.safetensors", "seed": 0,
            "train": {"epochs": 5, "lr": 1e-4, "optimizer": "adam", "batch_size": 128}}
    bench = {"cpu": "test CPU", "runs": [{"threads": 1, "batch": 1, "latency_ms_p50": 0.4, "latency_ms_p95": 0.6,
                                          "throughput_img_s": 2500.0}]}
    card = write_model_card(path, meta, None, bench, {"faithfulness_gap": 0.123456789, "gini": 0.60412345},
                            artifact_metrics=artifact, parent_metrics=parent, parent_scored="its ONNX file",
                            data_stats={"counts": {"train": 546, "test": 156}, "class_counts": {"train": [147, 399],
                                                                                              "test": [42, 114]}},
                            n_parameters=count_parameters(create_model("small_cnn", 2, 1)), versions={"qsal": "0.1.0"})
    return path, card, artifact, parent


def test_card_has_hugging_face_metadata(pact_card):
    from qsal.run_folder import file_sha256

    path, card, artifact, _ = pact_card
    text = path.with_suffix(".card.md").read_text()
    front = _front_matter(text)
    # the headline accuracy is at 0.5, not at the operating point of the recall/specificity beside it: named so
    results = front["model-index"][0]["results"][0]["metrics"]
    assert [m["name"] for m in results if m["type"] == "accuracy"] == ["test accuracy at 0.5"]
    # tied to its file (the card's own bytes' digest), the latency named by the file, not where it was timed
    assert card["sha256"] == file_sha256(path) and f"sha256 {card['sha256']}" in text
    assert card["latency"]["model"] == "m.onnx" and card["latency"]["sha256"] == card["sha256"]
    assert "classes: 0: malignant · 1: normal, benign" in text
    assert HF_KEYS <= set(front)
    assert front["pipeline_tag"] == "image-classification" and front["license"] == "cc-by-4.0"
    assert front["datasets"] == ["breastmnist"]
    assert "base_model" not in front  # Hugging Face takes a Hub id there; the parent is a local file
    assert "| parent (FP32) | fp32/best.safetensors |" in text  # folder and name, not the machine's path
    assert card["versions"] == {"qsal": "0.1.0"} and card["training"]["fine_tune"]
    assert "| fine-tune | 5 epochs (adam, lr 0.0001 x0.1 at 50/75 %, batch 128; no augmentation; best validation auc), seed 0 |" in text
    assert card["kernels"]["integer_kernels"] is True and "| kernels | integer: onnxruntime runs every" in text
    result = front["model-index"][0]["results"][0]
    assert result["task"]["type"] == "image-classification" and result["dataset"]["split"] == "test"
    by_type = {m["type"]: m["value"] for m in result["metrics"]}
    assert by_type["roc_auc"] == round(artifact["auc"], 4) and by_type["accuracy"] == round(artifact["acc"], 4)
    assert json.loads(path.with_suffix(".card.json").read_text())["metadata"] == front


def test_card_has_the_mitchell_sections_with_real_numbers(pact_card):
    path, card, artifact, parent = pact_card
    text = path.with_suffix(".card.md").read_text()
    for section in ("## Model details", "## Intended use", "## Out-of-scope use", "## Training and evaluation data",
                    "## Metrics", "## Factors", "## Change against the FP32 parent", "## Explanation metrics",
                    "## Caveats and recommendations"):
        assert section in text, section
    # per-layer bits: PACT keeps the first and last layers at 8 bit; the storage comes from the ONNX graph
    assert "| conv1 | 8 | INT8 |" in text and "| conv2 | 4 | INT4 |" in text and "| fc2 | 8 | INT8 |" in text
    assert "weight_scheme | symmetric" in text and "1,198,850" in text and "ONNX opset 21" in text
    lo, hi = artifact["ci"]["auc"]
    assert f"| AUC | {artifact['auc']:.3f} | {lo:.3f}–{hi:.3f} |" in text
    assert f"{artifact['acc'] - parent['acc']:+.3f}" in text and "the ONNX file run by onnxruntime" in text
    assert "| test | 156 | 42 (27%) | 114 (73%) |" in text  # class balance
    assert "| faithfulness_gap | 0.123 |" in text and "0.123456789" not in text  # rounded, and explained
    assert "positive class: **normal, benign**" in text  # the metrics above take label 1 as positive
    assert ("95% CIs: AUC and accuracy at 0.5 by the percentile bootstrap, 200 resamples, seed 0; sensitivity, specificity by "
            "the Wilson score interval") in text


def test_layer_storage_and_licences(pact_card):
    opset, layers = onnx_layer_storage(pact_card[0])
    assert opset == 21 and layers == {"conv1": "INT8", "conv2": "INT4", "fc1": "INT4", "fc2": "INT8"}
    assert hf_license("CC BY-NC 4.0") == "cc-by-nc-4.0" and hf_license("unknown (cite the tech report)") == "other"


def test_the_header_and_the_change_table_give_the_deployed_decisions_figures(tmp_path):
    # The Hugging Face header called a model that finds 95 % of malignant cases at its operating point "sensitivity
    # 0.0" (its figure at 0.5), and the change-against-parent table said "same operating point" over 0.5 figures.
    path = export_onnx(create_model("small_cnn", 2, 1).eval(), tmp_path / "m.onnx", input_shape=(1, 28, 28),
                       meta={"data": DATA}, check_untrained=False)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 156)
    logits = np.stack([y * 0.3, y * 0.3 + 2.0], 1) + rng.normal(0, 1.0, (156, 2))  # p(malignant) always low
    op = {"rule": "sensitivity:0.95", "threshold": 0.1, "chosen_on": "validation"}
    scored = compute_metrics(y, logits, "binary-class", positive_label=0, operating_point=op, n_bootstrap=0).to_dict()
    parent = compute_metrics(y, logits + 0.2, "binary-class", positive_label=0, operating_point=op,
                             n_bootstrap=0).to_dict()
    assert scored["sensitivity"] != scored["sensitivity_at_op"]
    meta = {"dataset": DATA, "arch": {"name": "small_cnn", "num_classes": 2, "in_channels": 1, "image_size": 28},
            "quant": {"method": "fp32"}}
    write_model_card(path, meta, None, None, None, artifact_metrics=scored, parent_metrics=parent)
    text = path.with_suffix(".card.md").read_text()
    metrics = {m["type"]: m for m in _front_matter(text)["model-index"][0]["results"][0]["metrics"]}
    assert metrics["recall"]["value"] == round(scored["sensitivity_at_op"], 4)
    assert metrics["recall"]["name"] == "test sensitivity (malignant positive) at the operating point"
    assert metrics["specificity"]["value"] == round(scored["specificity_at_op"], 4)
    change = text.split("## Change against the FP32 parent")[1].split("##")[0]
    assert (f"| sensitivity (positive: malignant) at the operating point | {scored['sensitivity_at_op']:.3f} | "
            f"{parent['sensitivity_at_op']:.3f} |") in change
    assert "| accuracy at 0.5 |" in change
    # the decision a clinic gets: PPV/NPV/accuracy at the operating point, its counts, and Wilson CIs (bootstrap off)
    accuracy = [m for m in _front_matter(text)["model-index"][0]["results"][0]["metrics"] if m["type"] == "accuracy"]
    assert [m["name"] for m in accuracy] == ["test accuracy at 0.5", "test accuracy at the operating point"]
    assert accuracy[1]["value"] == round(scored["accuracy_at_op"], 4)
    lo, hi = scored["ci"]["ppv_at_op"]
    assert f"| PPV (precision; positive: malignant) at the operating point | {scored['ppv_at_op']:.3f} | {lo:.3f}–{hi:.3f} |" in text
    assert f"| NPV at the operating point | {scored['npv_at_op']:.3f} |" in text
    (tn_m, fn_m), (fp_b, tp_b) = scored["confusion_at_op"]  # rows: malignant, benign (true); columns: decided
    assert f"| malignant | {tn_m} | {fn_m} |" in text and f"| normal, benign | {fp_b} | {tp_b} |" in text
    assert f"prevalence of malignant ({scored['prevalence']:.1%})" in text
    assert "sensitivity, specificity, PPV, NPV and accuracy at the operating point by the Wilson score interval" in text


def test_a_weight_only_card_says_its_file_runs_on_float_kernels(tmp_path):
    """Integer weights on disk, FP32 compute: the card said onnxruntime dequantizes them "when it loads the file" and
    computes at FP32's cost, but its optimised graph keeps a DequantizeLinear per weight, run on every call (an audit
    timed the file 1.8x slower than FP32). The export counts them there; the card says so."""
    from qsal.quant import WeightOnlyConfig

    qcfg = WeightOnlyConfig(bits=4)
    model = quantize(create_model("small_cnn", 2, 1), qcfg)
    path = export_onnx(model, tmp_path / "w.onnx", input_shape=(1, 28, 28), meta={"data": DATA, "quant": qcfg.to_dict()},
                       check_untrained=False)
    card = write_model_card(path, {"dataset": DATA, "arch": {"name": "small_cnn"}, "quant": qcfg.to_dict(), "seed": 3},
                            None, None)
    text = path.with_suffix(".card.md").read_text()
    assert card["kernels"]["integer_kernels"] is False and card["kernels"]["float_ops_after_optimization"]
    from qsal.export.fusion import optimized_graph

    graph = optimized_graph(path)
    kept = sum(n.op_type == "DequantizeLinear" and n.input[0] in {t.name for t in graph.initializer} for n in graph.node)
    assert kept == 4 and card["kernels"]["weights_dequantized_per_call"] == 4  # 2 convs + 2 linears
    assert ("| kernels | float: onnxruntime dequantizes these layers' weights on every call (4 DequantizeLinear nodes "
            "of weights stay in its optimised graph)") in text and "expect it slower than the FP32 file" in text
    assert "| seed | 3 |" in text


@pytest.mark.parametrize("arch,skip,int8_in_ort", [("small_cnn", ("fc1",), False),
                                                   ("resnet20", ("layers.0.conv1",), True)])
def test_a_card_with_layers_kept_fp32_says_what_onnxruntime_runs_them_on(tmp_path, arch, skip, int8_in_ort):
    """skip keeps layers FP32. small_cnn's fc1 (read through a pool and flatten) stays float in onnxruntime; a
    ResNet block's first conv is read straight from a quantized tensor (the shortcut reads it too), and onnxruntime
    quantizes its weights itself (per-tensor INT8): that file's card must not call it FP32 without saying so."""
    from qsal.quant import PTQConfig

    qcfg = PTQConfig(num_calibration=16, skip=skip)
    model = quantize(create_model(arch, 2, 1), qcfg, torch.randn(16, 1, 28, 28))
    path = export_onnx(model, tmp_path / "s.onnx", input_shape=(1, 28, 28), meta={"data": DATA, "quant": qcfg.to_dict()},
                       check_untrained=False)
    card = write_model_card(path, {"dataset": DATA, "arch": {"name": arch}, "quant": qcfg.to_dict()}, None, None)
    text = path.with_suffix(".card.md").read_text()
    assert card["kernels"]["fp32_layers_int8_in_onnxruntime"] == (list(skip) if int8_in_ort else [])
    assert ("run by onnxruntime on per-tensor INT8 weights it makes itself" in text) == int8_in_ort
    if not int8_in_ort:
        assert f"| kernels | integer but for float kernels (1 Gemm), the layers kept in FP32 among them ({skip[0]})" in text


def test_an_sgt_pact_card_is_named_so_and_its_fine_tune_row_gives_every_setting(tmp_path):
    """An SGT+PACT fine-tune's card read as PACT's (named ...-pact-4bit, no word of saliency guidance), and its
    fine-tune row left out augmentation and weight decay, which the card's JSON had."""
    from qsal.train import TrainConfig

    qcfg = PACTConfig(bits=4, num_calibration=16)
    model = quantize(create_model("small_cnn", 2, 1), qcfg, torch.randn(16, 1, 28, 28))
    path = export_onnx(model, tmp_path / "g.onnx", input_shape=(1, 28, 28), meta={"data": DATA, "quant": qcfg.to_dict()},
                       check_untrained=False)
    train = TrainConfig(epochs=1, lr=1e-4, shift_px=2, hflip=True, weight_decay=1e-4, select_on="loss").to_dict()
    meta = {"dataset": DATA, "arch": {"name": "small_cnn"}, "quant": qcfg.to_dict(), "seed": 0, "train": train,
            "epoch": 1, "step": {"step": "saliency_guided", "k": 0.5, "lambda": 1.0},
            "parent_checkpoint": str(tmp_path / "sgt" / "best.safetensors")}
    card = write_model_card(path, meta, None, None, None)
    text = path.with_suffix(".card.md").read_text()
    assert card["name"].endswith("-sgt+pact-4bit")
    assert ("| fine-tune | 1 epoch (adam, lr 0.0001 x0.1 at 50/75 %, weight decay 0.0001, batch 128; shift 2 px, "
            "h-flip; best validation loss), seed 0; selected at epoch 1; saliency-guided (Ismail et al. 2021: k 0.5, "
            "lambda 1.0) |") in text


@pytest.mark.parametrize("name, splits, caveat, cited", [
    ("breastmnist", "the official train/validation/test splits", "one public test split", True),
    ("mnist", "the official training and test sets, validation a seeded 10% of the training images (held out of "
     "training)", "one public",
     False),  # MNIST is not MedMNIST: its card cited MedMNIST v2
    ("folder:{root}", "a seeded 70/10/20 train/validation/test split of each class", "the test part of one image folder",
     False),
])
def test_a_card_says_where_its_splits_came_from(tmp_path, breast_folder, name, splits, caveat, cited):
    """Every card said "official train/validation/test splits" and "one public test split", a folder's and MNIST's
    too, and cited MedMNIST for MNIST; an FP32 card's tags listed fp32 twice."""
    if name.startswith("folder:"):
        name = name.format(root=breast_folder(5))
    data = {**DATA, "name": name}
    path = export_onnx(create_model("small_cnn", 2, 1), tmp_path / "m.onnx", input_shape=(1, 28, 28),
                       meta={"data": data}, check_untrained=False)
    meta = {"dataset": data, "arch": {"name": "small_cnn", "num_classes": 2, "in_channels": 1, "image_size": 28}}
    metrics = compute_metrics(np.array([0, 1, 0, 1]), np.array([[1., 0], [0, 1], [0, 1], [0, 1]]), "binary-class",
                              n_bootstrap=0).to_dict()
    card = write_model_card(path, meta, metrics, None, None, versions={})
    text = path.with_suffix(".card.md").read_text()
    assert f"{splits}; model selected on the validation split" in text and "official train/validation/test" not in \
        text.replace(splits, "")
    assert f"- Metrics come from {caveat}" in text and card["caveats"][0].startswith(f"Metrics come from {caveat}")
    assert ("MedMNIST v2, Scientific Data" in text) is cited
    tags = _front_matter(text)["tags"]
    assert tags.count("fp32") == 1 and len(tags) == len(set(tags))


def test_an_undefined_ppv_is_shown_with_its_reason_and_the_caveat_names_both_ci_methods(tmp_path):
    path = export_onnx(create_model("small_cnn", 2, 1).eval(), tmp_path / "m.onnx", input_shape=(1, 28, 28),
                       meta={"data": DATA}, check_untrained=False)
    y = np.array([0, 1] * 20)
    op = {"rule": "fixed", "threshold": 0.99999, "chosen_on": "fixed"}
    scored = compute_metrics(y, np.zeros((40, 2)), "binary-class", positive_label=0, operating_point=op,
                             n_bootstrap=20).to_dict()
    meta = {"dataset": DATA, "arch": {"name": "small_cnn", "num_classes": 2, "in_channels": 1, "image_size": 28},
            "quant": {"method": "fp32"}}
    write_model_card(path, meta, None, None, None, artifact_metrics=scored)
    text = path.with_suffix(".card.md").read_text()
    assert ("| PPV (precision; positive: malignant) at the operating point | undefined (no image was decided positive "
            "at the operating point) |") in text
    assert "confidence intervals (percentile bootstraps for AUC and accuracy at 0.5, Wilson intervals" in text
    assert "95% CIs: AUC and accuracy at 0.5 by the percentile bootstrap" in text
