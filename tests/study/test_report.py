import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qsal.study.report import pareto_front, results_table, robust_pareto_front, write_report
from qsal.saliency.plot import save_saliency_grid

MODELS = ("fp32", "ptq-int8", "pact-2")


def _results(tmp_path, with_arrays: bool = True):
    rng = np.random.default_rng(0)
    rows = [
        {"model": "fp32", "test_auc": 0.9, "test_acc": 0.85, "auc_ci": [0.85, 0.95], "acc_ci": [0.79, 0.9],
         "size_bytes": 4_000_000, "latency_b1_ms": 0.3, "size_ratio": 1.0, "most_changed": [], "scored": "onnx"},
        {"model": "ptq-int8", "test_auc": 0.9, "test_acc": 0.84, "auc_ci": [0.85, 0.95], "acc_ci": [0.78, 0.89],
         "size_bytes": 1_000_000, "latency_b1_ms": 0.1, "size_ratio": 0.25, "scored": "onnx",
         "most_changed": [{"index": 3, "spearman": 0.2, "topk_iou": 0.1}, {"index": 1, "spearman": 0.3, "topk_iou": 0.2}]},
        {"model": "pact-2", "test_auc": 0.7, "test_acc": 0.6, "auc_ci": [0.6, 0.8], "acc_ci": [0.52, 0.68],
         "size_bytes": 2_000_000, "latency_b1_ms": 0.5, "size_ratio": 0.5, "scored": "onnx",
         "most_changed": [{"index": 5, "spearman": 0.1, "topk_iou": 0.0}]},
    ]
    results = {"dataset": "breastmnist", "rows": rows, "class_names": ["malignant", "normal, benign"], "n_test": 156,
               "positive_class": "malignant",
               "environment": {"cpu": "test CPU", "cpu_count": 2, "versions": {"qsal": "0.1.0", "torch": "2.13.0"},
                               "utc": "2026-11-25T18:00:00+00:00"}}
    if with_arrays:
        y = rng.integers(0, 2, 156)
        probs = {m: np.clip(np.stack([1 - y, y], 1) * 0.7 + rng.random((156, 2)) * 0.3, 0, None) for m in MODELS}
        probs = {m: p / p.sum(1, keepdims=True) for m, p in probs.items()}
        results["predictions"] = {m: {"y_true": y, "probs": p} for m, p in probs.items()}
        results["saliency"] = {"images": rng.random((8, 28, 28)), "maps": {m: rng.random((8, 1, 28, 28)) for m in MODELS},
                               "y_true": y[:8], "probs": {m: p[:8] for m, p in probs.items()},
                               "class_names": results["class_names"], "method": "integrated gradients",
                               "indices": list(range(10, 18)), "reference": "fp32"}
    else:
        grid = save_saliency_grid(rng.random((2, 28, 28)), {m: rng.random((2, 1, 28, 28)) for m in MODELS[:2]},
                                  tmp_path / "saliency_grid.png")
        results["saliency_grid"] = str(grid)
    return results


def test_pareto_front():
    assert pareto_front([(1, 0.9), (2, 0.95), (3, 0.8), (1, 0.5)]) == [0, 1]


def test_robust_front_ignores_differences_inside_the_ci():
    x, y = [4.0, 1.0, 2.0], [0.85, 0.84, 0.60]
    lo, hi = [0.79, 0.78, 0.52], [0.90, 0.89, 0.68]
    assert robust_pareto_front(x, y, lo, hi) == [1]  # fp32's 0.01 lead is inside the CI: the small model wins
    assert robust_pareto_front(x, [0.95, 0.84, 0.6], [0.91, 0.78, 0.52], [0.98, 0.89, 0.68]) == [1, 0]
    assert robust_pareto_front([1.0, 1.05], [0.8, 0.8], [0.7, 0.7], [0.9, 0.9], x_tol=0.1) == [0, 1]  # latency noise


def test_markdown_and_self_contained_html(tmp_path):
    out = write_report(tmp_path, _results(tmp_path))
    md = (tmp_path / "report.md").read_text()
    assert "| ptq-int8 | ONNX artifact | 0.900 |" in md and "| ptq-int8 | #13 |" in md  # position 3 = test #13
    assert "976.6 KiB" in md and "3.81 MiB" in md and "positive class**: malignant" in md
    # the glossary explains what the report shows: the most-changed table's ρ and IoU, no Gini column here
    assert "## Glossary" in md and "**Top-10% IoU**" in md and "**Gini**" not in md and "| torch | 2.13.0 |" in md
    page = (tmp_path / "report.html").read_text()
    # 4 trade-offs + CI forest + 3 diagnostics + saliency grid + most-changed grid
    assert page.count("data:image/png;base64,") == 10
    assert not re.search(r"""src=["']https?:""", page)  # no network needed
    assert "{'cpu'" not in page and "<td>test CPU</td>" in page  # environment is a table, not a dict repr
    assert out["table"].startswith("| model |")
    assert "No model beats ptq-int8 beyond the 95% CI" in page


def test_report_without_probabilities_says_so(tmp_path):
    write_report(tmp_path, _results(tmp_path, with_arrays=False))
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 6 and "they are shown for the models that recorded them" in page


def _chromium():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if not browser:
        pytest.skip("Debian chromium is not installed (apt-get install chromium); .ci/run installs it")
    return browser


def test_report_renders_in_headless_chromium(tmp_path):
    browser = _chromium()
    write_report(tmp_path, _results(tmp_path))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000", "--enable-logging=stderr",
             "--window-size=1280,2400", "--hide-scrollbars"]
    url = (tmp_path / "report.html").as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert 'data-images-ok="true"' in dom.stdout and 'data-image-count="10"' in dom.stdout  # decoded, all with alt
    assert 'data-overflow-x="false"' in dom.stdout  # no horizontal scrolling at 1280 px
    assert not re.search(r"CONSOLE.*(Uncaught|Error)|Uncaught", dom.stderr)
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000
    artifacts = Path(tmp_path).parents[1] / "report-screenshot.png"
    shutil.copy(shot, artifacts)  # kept beside pytest's tmp dirs as the test artifact


def test_a_study_over_several_datasets_names_each_ones_positive_class():
    from qsal.study.report.html import _header

    rows = [{"model": "breastmnist/small_cnn/fp32", "positive_class": "malignant"},
            {"model": "pneumoniamnist/small_cnn/fp32", "positive_class": "pneumonia"},
            {"model": "retinamnist/small_cnn/fp32", "positive_class": None}]
    header = dict(_header({"dataset": "edge-medmnist"}, rows))
    assert header["positive class"] == ("breastmnist: malignant; pneumoniamnist: pneumonia; "
                                        "retinamnist: none (multi-class: one vs the rest)")
    assert dict(_header({"dataset": "breastmnist"}, rows[:1]))["positive class"] == "malignant"
    # each test split's size, and a column naming each row's positive class (the headers cannot name one)
    header = dict(_header({"dataset": "edge-medmnist", "n_test_per_dataset": {"breastmnist": 156,
                                                                              "pneumoniamnist": 624}}, rows))
    assert header["test images (n)"] == "breastmnist: 156; pneumoniamnist: 624"
    from qsal.study.report.tables import results_table, results_text_table

    rows = [{**r, "scored": "onnx", "sensitivity": 0.5} for r in rows]
    table = results_table(rows).splitlines()
    assert table[0] == "| model | scored as | positive class | sens. @ 0.5 |"
    assert table[2:] == ["| breastmnist/small_cnn/fp32 | ONNX artifact | malignant | 0.500 |",
                         "| pneumoniamnist/small_cnn/fp32 | ONNX artifact | pneumonia | 0.500 |",
                         "| retinamnist/small_cnn/fp32 | ONNX artifact | — | 0.500 |"]
    assert "positive class" in results_text_table(rows).splitlines()[0]
    one = results_table(rows[:1]).splitlines()[0]  # one dataset: the header names it, no column
    assert one == "| model | scored as | sens. (positive: malignant) @ 0.5 |"


def test_a_mean_outside_its_ci_still_plots(tmp_path):
    from qsal.study.report.plots import ci_plot, tradeoff_plot

    rows = [{"model": "a", "test_acc": 0.842, "acc_ci": [0.85, 0.90], "test_auc": 0.9, "auc_ci": [0.85, 0.95],
             "size_bytes": 313155},
            {"model": "b", "test_acc": 0.80, "acc_ci": [0.75, 0.85], "test_auc": 0.88, "auc_ci": [0.83, 0.93],
             "size_bytes": 186653}]
    assert tradeoff_plot(rows, "size_bytes", tmp_path / "t.png")[0].is_file()
    assert ci_plot(rows, tmp_path / "c.png").is_file()


def test_report_header_numbers_class_labels_since_a_label_may_hold_a_comma():
    from qsal.data import get_info
    from qsal.study.report.html import _classes

    assert _classes(list(get_info("breastmnist").labels)) == "0: malignant · 1: normal, benign"
    assert _classes([str(i) for i in range(10)]) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9"
    assert _classes([]) is None


def test_where_the_cells_ran_says_whose_thread_count_it_shows():
    # the latency columns are ONNX Runtime on 1 thread whatever the cells trained on; a bare "torch threads" next to
    # the CPU that timed them read as the latency's thread count
    from qsal.study.report.tables import machines_table

    table = machines_table([{"trained_on": "NVIDIA H200", "cpu": "Xeon", "torch": "2.11.0", "torch_threads": 5,
                             "cells": 3, "datasets": ["pneumoniamnist"]}])
    header, _, row = table.splitlines()
    assert "torch threads (training)" in header
    assert row == "| NVIDIA H200 | Xeon | 2.11.0 | 5 | 3 | pneumoniamnist |"


def test_captions_and_diagnostics_decide_at_each_models_operating_point(tmp_path, monkeypatch):
    """A model deployed with p(malignant) >= 0.3 calls p = .38 malignant: its caption must say so, not the argmax."""
    from qsal.study.report import saliency as saliency_figures_module

    captured = {}

    def fake_grid(images, maps, path, row_labels, title, cell_captions, **_):
        captured.setdefault(Path(path).name, cell_captions)
        Path(path).write_bytes(b"")
        return Path(path)

    monkeypatch.setattr(saliency_figures_module, "save_saliency_grid", fake_grid)
    probs = np.array([[0.38, 0.62], [0.2, 0.8]])
    op = {"rule": "youden", "threshold": 0.3, "chosen_on": "validation"}
    sal = {"images": np.zeros((2, 28, 28)), "maps": {m: np.zeros((2, 1, 28, 28)) for m in ("fp32", "pact-4")},
           "y_true": np.array([0, 1]), "probs": {"fp32": probs, "pact-4": probs},
           "class_names": ["malignant", "normal, benign"], "task": "binary-class", "reference": "fp32"}
    saliency_figures_module.saliency_figures(sal, {}, tmp_path, {"fp32": {"positive_label": 0, "operating_point": op},
                                                                 "pact-4": {}})
    captions = captured["saliency_grid.png"]
    assert captions["fp32"] == ["malignant 0.38", "normal, benign 0.80"]
    assert captions["pact-4"] == ["normal, benign 0.62 ✗", "normal, benign 0.80"]  # no operating point: 0.5

    # the report: a threshold column where models differ, and diagnostics for rows of several datasets
    results = _results(tmp_path)
    results["rows"][0]["operating_point"] = op
    results["rows"][1]["operating_point"] = {**op, "threshold": 0.04512}
    results["rows"][0]["sensitivity"] = 0.7
    for r in results["rows"]:
        r.update(model="breastmnist/small_cnn/" + r["model"], class_names=["malignant", "normal, benign"],
                 positive_label=0, positive_class="malignant")
    results["predictions"] = {"breastmnist/small_cnn/" + m: p for m, p in results["predictions"].items()}
    del results["class_names"], results["saliency"]
    write_report(tmp_path / "r", results)
    md = (tmp_path / "r" / "report.md").read_text()
    assert "**operating point**: each model's own" in md and "| op threshold |" in md.replace(" (positive: malignant)", "")
    assert "| 0.3000 |" in md and "| 0.04512 |" in md and "sens. (positive: malignant) @ 0.5" in md
    assert md.count("![breastmnist/small_cnn/") == 3  # one diagnostics figure per row, from each row's classes


def test_a_failed_cell_whose_error_file_lacks_fields_is_still_listed(tmp_path):
    from qsal.study.results import _read_error

    cell = tmp_path / "breastmnist/small_cnn/seed0/qat-int8"
    cell.mkdir(parents=True)
    (cell / "error.json").write_text('{"error": "boom"}')
    assert _read_error(cell / "error.json", tmp_path) == {"error": "boom", "type": "unknown error",
                                                         "id": "breastmnist/small_cnn/seed0/qat-int8"}
    (cell / "error.json").write_text('["not", "a", "dict"]')
    assert _read_error(cell / "error.json", tmp_path)["type"] == "QsalError"  # read_json's own refusal, as text


def test_a_run_folders_rows_say_what_was_scored_and_whose_classes_they_are():
    from qsal.study.results import collect_results

    run = Path(__file__).parents[2] / "benchmarks/results/study_breast_quick"
    rows = collect_results(run, grids=False)["rows"]
    assert rows and all(r["scored"] == "onnx" for r in rows)
    assert all(r["class_names"] == ["malignant", "normal, benign"] and r["positive_label"] == 0 for r in rows)
    assert all(0 < r["operating_point"]["threshold"] < 1 for r in rows)  # the first seed's, as its plots show


def test_a_multi_label_row_gets_no_confusion_matrix_and_stops_nothing(tmp_path):
    results = _results(tmp_path)
    rng = np.random.default_rng(1)
    results["predictions"]["pact-2"] = {"y_true": rng.integers(0, 2, (156, 2)), "probs": rng.random((156, 2))}
    write_report(tmp_path / "r", results)  # a ChestMNIST row beside binary ones: sklearn refused the mix
    md = (tmp_path / "r" / "report.md").read_text()
    assert "diagnostics_pact-2.png" not in md and "diagnostics_fp32.png" in md


def test_a_study_of_two_datasets_draws_one_front_per_dataset(tmp_path):
    """An accuracy on PneumoniaMNIST's test set neither beats nor ties one on BreastMNIST's: the trade-off plots and
    their fronts are per dataset, and the header names the datasets, not the study."""
    results = _results(tmp_path, with_arrays=False)
    rows = [{**r, "model": f"breastmnist/small_cnn/{r['model']}", "dataset": "breastmnist"} for r in results["rows"]]
    rows += [{**rows[0], "model": "pneumoniamnist/small_cnn/fp32", "dataset": "pneumoniamnist", "test_acc": 0.99,
              "acc_ci": [0.98, 1.0], "test_auc": 0.99, "auc_ci": [0.98, 1.0], "size_bytes": 100}]
    write_report(tmp_path, {**results, "rows": rows, "dataset": "breastmnist, pneumoniamnist"})
    md = (tmp_path / "report.md").read_text()
    assert "# qsal report: breastmnist, pneumoniamnist" in md
    assert (tmp_path / "acc_vs_size_breastmnist.png").is_file() and (tmp_path / "acc_vs_size_pneumoniamnist.png").is_file()
    assert not (tmp_path / "acc_vs_size.png").exists()
    assert "breastmnist: Test ACC against ONNX file size" in md and "No model beats breastmnist/small_cnn/ptq-int8" in md
    assert "pneumoniamnist/small_cnn/fp32" not in md.split("breastmnist: Test ACC against ONNX file size")[1].split("\n")[0]


def test_the_header_says_how_the_models_were_trained_and_how_each_threshold_was_chosen(tmp_path):
    from qsal.study.results import _schedule_words

    results = _results(tmp_path, with_arrays=False)
    for i, r in enumerate(results["rows"]):
        r["operating_point"] = {"rule": "youden", "chosen_on": "validation", "scores": "PyTorch model",
                                "threshold": 0.2 + 0.1 * i}
    study = {"name": "s", "datasets": ["breastmnist"], "models": ["small_cnn"], "methods": ["fp32", "pact"],
             "epochs": {"fp32": 12, "finetune": 3}}
    write_report(tmp_path, {**results, "schedule": _schedule_words(study)})
    md = (tmp_path / "report.md").read_text()
    assert ("**operating point**: each model's own (the 'op threshold' column), each by youden on the validation split "
            "with the PyTorch model's scores") in md
    results["rows"][-1]["operating_point"]["scores"] = "fake-quantized PyTorch model"  # a quantized cell's threshold
    write_report(tmp_path, {**results, "schedule": _schedule_words(study)})
    assert ("each by youden on the validation split with its own PyTorch model's scores (a quantized cell's: its "
            "fake-quantized forward)") in (tmp_path / "report.md").read_text()
    # every setting that shapes the weights (EMA and augmentation made two studies read alike), SGT only where trained
    assert ("**schedule**: FP32 12 epochs (adam, lr 0.001 x0.1 at 50/75 %, batch 128; no augmentation; best validation "
            "auc); fine-tunes 3 epochs (adam, lr 0.0005 x0.1 at 50/75 %, batch 128; no augmentation; best validation auc)") in md
    guided = {**study, "methods": ["fp32", "sgt", "sgt+pact"], "train": {"ema_decay": 0.99, "shift_px": 2},
              "sgt": {"k": 0.3}, "pact": {4: {"weight_clip": "mse"}}}
    assert _schedule_words(guided) == (
        "FP32/SGT 12 epochs (adam, lr 0.001 x0.1 at 50/75 %, batch 128; shift 2 px; EMA 0.99; best validation auc); "
        "fine-tunes 3 epochs (adam, lr 0.0005 x0.1 at 50/75 %, batch 128; shift 2 px; EMA 0.99; best validation auc); "
        "SGT k 0.3, lambda 1, target log_softmax; PACT options 4-bit: weight_clip mse")


def test_an_older_cell_without_whose_scores_does_not_hide_the_threshold_rule(tmp_path):
    """The ResNet-18 report said only "each model's own": some cells record `scores`, older ones do not."""
    results = _results(tmp_path, with_arrays=False)
    for i, r in enumerate(results["rows"]):
        r["operating_point"] = {"rule": "youden", "chosen_on": "validation", "threshold": 0.2 + 0.1 * i,
                                **({"scores": "PyTorch model"} if i else {})}
    write_report(tmp_path, results)
    md = (tmp_path / "report.md").read_text()
    assert ("each by youden on the validation split with the PyTorch model's scores (where recorded)") in md


def test_a_run_folders_rows_show_seed_spread_at_the_operating_point_machines_and_throughput_definition(tmp_path):
    """Audit: '@ op' was a mean of seeds each at its own threshold with no spread; latency means mixed CPUs, and
    throughput mixed two definitions, without a word; a quantized row with one seed recording its kernels read as
    if all did."""
    import json
    import shutil

    from qsal.study.results import THROUGHPUT_REDEFINED, collect_results

    run = tmp_path / "run"
    shutil.copytree(Path(__file__).parents[2] / "benchmarks/results/study_breast_quick", run)
    before = "2026-11-25T18:00:00+00:00"  # timed before throughput's redefinition, with no kernels recorded
    for cell in ("seed0/fp32", "seed1/fp32", "seed0/pact-4"):
        path = run / "breastmnist/small_cnn" / cell / "result.json"
        result = json.loads(path.read_text())
        result["environment"] = {**result["environment"], "cpu": "This CPU", "utc": before}
        result.pop("kernels", None)
        path.write_text(json.dumps(result))
    cell = run / "breastmnist/small_cnn/seed1/pact-4/result.json"
    result = json.loads(cell.read_text())
    result["environment"] = {**result["environment"], "cpu": "Another CPU", "utc": THROUGHPUT_REDEFINED + ":30+00:00"}
    result["kernels"] = "integer"
    cell.write_text(json.dumps(result))
    rows = {r["model"]: r for r in collect_results(run, grids=False)["rows"]}
    seeds = [json.loads((run / f"breastmnist/small_cnn/seed{s}/fp32/result.json").read_text()) for s in (0, 1)]
    assert np.isclose(rows["fp32"]["sensitivity_at_op_std"], np.std([s["sensitivity_at_op"] for s in seeds]))
    assert rows["pact-4"]["latency_cpus"] == 2 and rows["fp32"]["latency_cpus"] == 1
    assert rows["pact-4"]["throughput_definition"] == "mixed" and rows["fp32"]["throughput_definition"] == "median"
    assert rows["pact-4"]["kernels"] == "integer (1 of 2 seeds recorded)" and rows["fp32"]["kernels"] == "float"
    # scored on a CPU without VNNI, where qsal runs the 8-bit layers on the exact kernels: the column says so
    result["u8u8_kernels"] = "this CPU has no VNNI ..."
    cell.write_text(json.dumps(result))
    assert {r["model"]: r for r in collect_results(run, grids=False)["rows"]}["pact-4"]["kernels"] == \
        "integer, exact u8u8 (no VNNI) (1 of 2 seeds recorded)"
    del result["u8u8_kernels"]  # a record of the qsal that ran the dequantized graph there
    result["integer_kernels_off"] = "this CPU has no VNNI ..."
    cell.write_text(json.dumps(result))
    assert {r["model"]: r for r in collect_results(run, grids=False)["rows"]}["pact-4"]["kernels"] == \
        "float, dequantized (no VNNI) (1 of 2 seeds recorded)"
    assert rows["fp32"]["latency_b1_ms"] == np.median([s["latency_b1_ms"] for s in seeds])
    table = results_table(list(rows.values()))
    assert "sens. @ op std" in table and "timed on (CPUs)" in table and "img/s by" in table
    for r in rows.values():
        r["latency_cpus"], r["throughput_definition"] = 1, "total"
    table = results_table(list(rows.values()))  # nothing mixed: the columns stay out
    assert "timed on (CPUs)" not in table and "img/s by" not in table


def test_the_glossary_explains_only_columns_the_report_shows_and_the_header_names_the_splits(tmp_path):
    """A CIFAR-10 report described sensitivity and operating points it had no column for, and never said its
    validation images were held out of training (which matters beside published figures)."""
    from qsal.study.report.tables import glossary_entries

    results = _results(tmp_path, with_arrays=False)
    rows = [{k: v for k, v in r.items() if k not in ("sensitivity", "specificity", "sensitivity_at_op",
                                                     "specificity_at_op", "threshold", "positive_class")}
            | {"dataset": "cifar10"} for r in results["rows"]]
    terms = [t for t, _ in glossary_entries(rows)]
    assert "Sensitivity / specificity" not in terms and "Operating point" not in terms and "AUC" in terms
    assert "Sensitivity / specificity" in [t for t, _ in glossary_entries([{**rows[0], "sensitivity": 0.8}])]
    write_report(tmp_path / "r", {**results, "rows": rows})
    md = (tmp_path / "r" / "report.md").read_text()
    assert "validation a seeded 10% of the training images (held out of training)" in md
    assert "**Sensitivity / specificity**" not in md


def test_a_ten_class_confusion_matrix_keeps_each_count_in_its_cell_and_names_apart(tmp_path, monkeypatch):
    """CIFAR-10's diagnostics: 3-digit counts at 10 pt ran into their neighbours, and class names overlapped."""
    import qsal.study.report.plots as plots

    drawn = {}
    monkeypatch.setattr(plots, "save_figure_atomic", lambda fig, path: drawn.setdefault("fig", fig) and path)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 1000)
    probs = rng.random((10000, 10)) + np.eye(10)[y] * 3
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    plots.diagnostics_plot("fp32", y, probs / probs.sum(1, keepdims=True), names, tmp_path / "d.png")
    fig = drawn["fig"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    cell = ax.transData.transform((1, 0))[0] - ax.transData.transform((0, 0))[0]  # px per cell
    counts = [t for t in ax.texts if t.get_text().isdigit()]
    assert len(counts) == 100 and max(len(t.get_text()) for t in counts) >= 3
    assert all(t.get_window_extent(renderer).width < cell for t in counts)
    ticks = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels()), key=lambda b: b.x0)
    assert all(a.x1 <= b.x1 and a.y0 <= b.y0 + cell for a, b in zip(ticks, ticks[1:]))  # slanted, in order


def test_the_demos_header_names_its_splits_from_the_reports_dataset():
    from qsal.study.report.html import _header

    demo = dict(_header({"dataset": "mnist"}, [{"model": "fp32"}]))  # demo rows do not name their dataset
    assert demo["splits"].endswith("validation a seeded 10% of the training images (held out of training)")
    assert "splits" not in dict(_header({"dataset": "breastmnist, mnist"}, [{"model": "fp32"}]))  # a title, not a set


def test_a_faithfulness_gap_that_no_removal_could_move_is_named_as_ranking_nothing(tmp_path):
    results = _results(tmp_path, with_arrays=False)
    results["rows"][0].update(faithfulness_gap=0.0, faithfulness_changed=0.0)  # every decision held at every removal
    results["rows"][1].update(faithfulness_gap=0.0, faithfulness_changed=0.25)  # a measured 0: some decisions moved
    results["rows"][2].update(faithfulness_gap=0.0, faithfulness_changed=0.0, seeds=2,
                              faithfulness_changed_seeds=1)  # one seed made before the share was recorded: not said
    write_report(tmp_path / "r", results)
    md = (tmp_path / "r" / "report.md").read_text()
    assert ("> Faithfulness gap of fp32: no removal of pixels, salient or random, moved any explained image's decision"
            in md)
    assert "gap of fp32, ptq-int8" not in md and "gap of fp32, pact-2" not in md
