"""Every CLI command, garbage in each input slot: exit 2, exactly one ``error:`` line, no traceback, no new file.

The inputs are made by the tests (``reliability_inputs``): broken checkpoints and their JSON, ONNX files
with bad metadata, image folders with broken PNG/DICOM files, YAML configs, run folders and resume
states, and out-of-range numbers. A new command or input slot belongs in ``CASES``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reliability_inputs import (ALIAS_BOMB, assert_clean_refusal, bad_image, checkpoint_variant, files_under,
                                image_folder, onnx_variant, run_cli)


CHECKPOINT_COMMANDS = {
    "evaluate": lambda ck, out: ["evaluate", ck, "--out", out / "m.json"],
    "quantize": lambda ck, out: ["quantize", ck, "--num-calibration", "16", "--out", out / "q", "--no-progress"],
    "quantize-sgt": lambda ck, out: ["quantize", ck, "--method", "pact", "--bits", "4", "--saliency-guided",
                                     "--epochs", "1", "--out", out / "q", "--no-progress"],
    "export": lambda ck, out: ["export", ck, "--out", out / "m.onnx"],
    "explain": lambda ck, out: ["explain", ck, "--method", "gradient", "--n", "2", "--out", out / "s.png"],
}
CHECKPOINT_CASES = {  # variant: (expected text, commands that must refuse it)
    "arch_is_a_string": ("'arch' is str", CHECKPOINT_COMMANDS),
    "num_classes_missing": ("arch.num_classes must be a positive integer", CHECKPOINT_COMMANDS),
    "num_classes_is_a_string": ("arch.num_classes must be a positive integer, got '2'", CHECKPOINT_COMMANDS),
    "image_size_huge": ("arch.image_size must be an integer in 12-1024", CHECKPOINT_COMMANDS),
    "list_at_top_level": ("holds a list, not a mapping", CHECKPOINT_COMMANDS),
    "invalid_json": ("is not valid JSON", CHECKPOINT_COMMANDS),
    "quant_garbage": ("no field(s) ['bogus_field']", CHECKPOINT_COMMANDS),
    "data_is_a_list": ("'data' must be a mapping", CHECKPOINT_COMMANDS),
    "dataset_name_is_a_number": ("dataset.name must be a string, got 7", CHECKPOINT_COMMANDS),
    "nan_weights": ("NaN/Inf values", CHECKPOINT_COMMANDS),
    "json_missing": ("has no best.json beside it", CHECKPOINT_COMMANDS),
    "pickle": ("qsal never unpickles", CHECKPOINT_COMMANDS),
    "truncated_weights": ("not a readable safetensors file", CHECKPOINT_COMMANDS),
    "dataset_with_other_channels": ("cifar10 has 10 classes / 3 channels",
                                    {k: v for k, v in CHECKPOINT_COMMANDS.items() if k != "export"}),
    "no_dataset": ("does not name its dataset", {k: v for k, v in CHECKPOINT_COMMANDS.items() if k != "export"}),
}
# The stored decision and class names: refused by every command that reads them, predict included (its image
# path does not exist; the checkpoint is read first).
_DECIDING = {**CHECKPOINT_COMMANDS, "predict": lambda ck, out: ["predict", ck, out / "scan.png"]}
CHECKPOINT_CASES.update({
    "threshold_is_a_string": ("decision.operating_point.threshold must be a probability in [0, 1], got 'x'", _DECIDING),
    "temperature_zero": ("decision.temperature must be a finite number > 0", _DECIDING),
    "positive_label_out_of_range": ("decision.positive_label must be a class id 0-1 or null, got 7", _DECIDING),
    "positive_label_null": ("decision.operating_point is set but decision.positive_label is null", _DECIDING),
    "labels_not_a_list": ("dataset.labels must be a list of class names (strings), got 'ab'", _DECIDING),
    "labels_wrong_count": ("dataset.labels: 3 class names for a model with 2 outputs", _DECIDING),
    "n_channels_contradicts_arch": ("dataset.n_channels is 3 but the model takes 1 channel(s)", _DECIDING),
    "task_unknown": ("dataset.task must be one of binary-class", _DECIDING),
    "rule_unknown": ("decision.operating_point.rule 'nonsense' is not youden, sensitivity:S", _DECIDING),
    "positive_class_contradicts_label": ("decision.positive_class is 'malignant' but decision.positive_label 1 is "
                                         "'normal, benign'", _DECIDING),
})


@pytest.mark.parametrize("variant,command", [(v, c) for v, (_, cmds) in CHECKPOINT_CASES.items() for c in cmds])
def test_broken_checkpoints_are_refused_by_every_command(variant, command, good_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ck = checkpoint_variant(good_run, tmp_path / "ck", variant)
    before = files_under(tmp_path)
    rc, out, err = run_cli(CHECKPOINT_CASES[variant][1][command](ck, tmp_path / "out"), capsys)
    assert_clean_refusal(rc, out, err, CHECKPOINT_CASES[variant][0])
    assert files_under(tmp_path) == before  # nothing half-written


ONNX_COMMANDS = {
    "bench": lambda m, out: ["bench", m, "--threads", "1", "--seconds", "0.05", "--out", out / "b.json"],
    "explain": lambda m, out: ["explain", m, "--method", "occlusion", "--n", "2", "--out", out / "s.png"],
}
ONNX_CASES = {
    "empty": ("is empty (0 bytes)", ONNX_COMMANDS),
    "garbage": ("is not a readable ONNX file", ONNX_COMMANDS),
    "metadata_not_json": ("'qsal' metadata is not valid JSON", ONNX_COMMANDS),
    "no_input_shape": ("input_shape must be [channels, height, width]", ONNX_COMMANDS),
    "std_zero": ("data.std must be one finite number > 0", ONNX_COMMANDS),
    "not_from_qsal": ("was not exported by qsal", ONNX_COMMANDS),
    "no_data_name": ("does not name its dataset in its metadata; pass --dataset", {"explain": ONNX_COMMANDS["explain"]}),
}
_ONNX_DECIDING = {**ONNX_COMMANDS, "evaluate": lambda m, out: ["evaluate", m, "--out", out / "m.json"],
                  "predict": lambda m, out: ["predict", m, out / "scan.png"]}
ONNX_CASES.update({
    "threshold_is_a_string": ("decision.operating_point.threshold must be a probability in [0, 1], got 'x'",
                              _ONNX_DECIDING),
    "temperature_is_a_string": ("decision.temperature must be a finite number > 0", _ONNX_DECIDING),
    "positive_label_out_of_range": ("decision.positive_label must be a class id 0-1 or null, got 7", _ONNX_DECIDING),
    "positive_label_null": ("decision.operating_point is set but decision.positive_label is null", _ONNX_DECIDING),
    "labels_wrong_count": ("data.labels: 3 class names for a model with 2 outputs", _ONNX_DECIDING),
    "image_size_is_a_string": ("metadata data.image_size must be a positive integer, got 'big'", _ONNX_DECIDING),
    "input_shape_not_the_graphs": ("its metadata says input_shape [3, 28, 28] but its graph takes ['N', 1, 28, 28]",
                                   _ONNX_DECIDING),
})


@pytest.mark.parametrize("variant,command", [(v, c) for v, (_, cmds) in ONNX_CASES.items() for c in cmds])
def test_broken_onnx_files_are_refused(variant, command, good_onnx, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = onnx_variant(good_onnx, tmp_path / "m.onnx", variant)
    before = files_under(tmp_path)
    rc, out, err = run_cli(ONNX_CASES[variant][1][command](model, tmp_path / "out"), capsys)
    assert_clean_refusal(rc, out, err, ONNX_CASES[variant][0])
    assert files_under(tmp_path) == before


NUMBER_CASES = {  # argv with {ck} / {onnx} / {cfg} placeholders: expected text
    ("quantize", "{ck}", "--num-calibration", "-1"): "--num-calibration: -1 is out of range",
    ("quantize", "{ck}", "--bits", "9"): "--bits: 9 is out of range",
    ("train", "--seed", "-1"): "--seed: -1 is out of range",
    ("quantize", "{ck}", "--method", "qat", "--ema-decay", "1.5"): "--ema-decay: 1.5 is out of range",
    ("quantize", "{ck}", "--ema-decay", "0.9"): "--ema-decay averages fine-tuned weights; --method ptq trains nothing",
    ("quantize", "{ck}", "--method", "weight-only", "--bits", "4", "--hflip", "--zoom", "0.1"):
        "--hflip and --zoom shape the fine-tune; --method weight-only trains nothing (use them with qat or pact",
    ("train", "--ema-decay", "0"): "--ema-decay: 0 is out of range: an EMA decay must be finite, > 0.0",
    ("train", "--ema-decay", "1"): "--ema-decay: 1 is out of range: an EMA decay must be finite, > 0.0, < 1.0",
    ("train", "--device", "tpu"): "--device: invalid choice: 'tpu'",
    ("train", "--precision", "fp16"): "--precision: invalid choice: 'fp16'",
    ("train", "--epochs", "abc"): "--epochs: 'abc' is not an integer",
    ("train", "--lr", "nan"): "--lr: nan is out of range",
    ("train", "--size", "100000"): "--size: 100000 is out of range",
    ("train", "--epochs", "1", "--split-seed", "3"): "split_seed 3: breastmnist comes with its official "
                                                     "train/validation/test splits, which no seed draws; drop it",
    ("train", "--sgt-k", "1.5"): "--sgt-k: 1.5 is out of range",
    ("train", "--epochs", "1", "--shift-px", "28"): "shift_px 28 is as large as the images (28x28 px); use a shift below",
    ("explain", "{ck}", "--n", "0"): "--n: 0 is out of range",
    ("explain", "{ck}", "--split", "holdout"): "--split: invalid choice",
    ("models", "--image-size", "1"): "--image-size: 1 is out of range",
    ("models", "--image-size", "100000"): "--image-size: 100000 is out of range",
    ("models", "--in-channels", "2"): "--in-channels: invalid choice: 2",
    ("bench", "{onnx}", "--threads", "-1"): "--threads: -1 is out of range",
    ("bench", "{onnx}", "--seconds", "0"): "--seconds: 0 is out of range",
    ("bench", "{onnx}", "--seconds", "-1"): "--seconds: -1 is out of range",
    ("run", "{cfg}", "--workers", "0"): "--workers: 0 is out of range",
    ("run", "{cfg}", "--no-estimate"): "--no-estimate skips --dry-run's timing; it does nothing without --dry-run",
    ("demo", "--seed", "-5"): "--seed: -5 is out of range",
    ("export", "{ck}", "--format", "tflite"): "--format: invalid choice: 'tflite'",
    ("quantize", "{ck}", "--skip", "nosuchlayer"): "--skip names ['nosuchlayer'] are not layers of small_cnn",
    # options the method does not use: refused, not recorded as if they had done something
    ("quantize", "{ck}", "--epochs", "3"): "--epochs shapes the fine-tune; --method ptq trains nothing",
    ("quantize", "{ck}", "--saliency-guided", "--lr", "0.01"):
        "--lr and --saliency-guided shape the fine-tune; --method ptq trains nothing (use them with qat or pact)",
    ("quantize", "{ck}", "--method", "pact", "--sgt-k", "0.3"):
        "--sgt-k sets the saliency-guided training; add --saliency-guided, or drop it",
    ("train", "--sgt-lambda", "5"): "--sgt-lambda sets the saliency-guided training; add --saliency-guided",
    ("quantize", "{ck}", "--method", "pact", "--observer", "mse"):
        "--observer picks PTQ's calibration; --method pact learns its clipping range: drop --observer",
    ("quantize", "{ck}", "--method", "weight-only", "--num-calibration", "5"):
        "--num-calibration: --method weight-only calibrates no activations",
    ("quantize", "{ck}", "--method", "weight-only", "--seed", "5"):
        "--seed draws the calibration images and seeds the fine-tune; --method weight-only has neither",
    ("quantize", "{ck}", "--num-calibration", "100000"):
        "num_calibration 100000 is more than the 546 training images of breastmnist",
    ("quantize", "{ck}", "--resume", "--force"): "argument --force: not allowed with argument --resume",
    # --resume with no run to continue started a new one from scratch
    ("train", "--epochs", "1", "--resume"): "--resume continues the run in --out, and no --out was given",
    ("train", "--epochs", "1", "--resume", "--out", "{dir}"): "holds no run (run.json); pass --out of the run",
    ("quantize", "{ck}", "--resume", "--out", "{dir}"): "holds no run (run.json)",
    ("train", "--dataset", "folder:", "--epochs", "1"): "--dataset folder: needs the path of a folder",
    ("train", "--resume", "--force"): "argument --force: not allowed with argument --resume",
    ("nosuchcommand",): "invalid choice: 'nosuchcommand'",
    ("run", "{dir}"): "is a folder; pass the study YAML file",
    ("export", "{ck}", "--out", "{dir}"): "is a folder",  # an output slot pointing at a folder
    ("bench", "{onnx}", "--threads", "1", "--seconds", "0.05", "--out", "{dir}"): "is a folder; --out names the file",
    # refused before timing: the JSON would have replaced the model being timed, or someone's file
    ("bench", "{onnx}", "--seconds", "0.05", "--out", "{onnx}"): "is the model this command reads",
    ("bench", "{onnx}", "--seconds", "0.05", "--out", "b.csv"): "bench writes its result as JSON; name the file .json",
    ("bench", "{onnx}", "--seconds", "0.05", "--out", "{onnx}", "--force"): "is the model this command reads",
    ("bench", "{onnx}", "--seconds", "0.05", "--out", "{file}"): "bench writes its result as JSON; name the file .json",
    ("bench", "{ck}"): "is a checkpoint; bench times the deployed file: export it first",
    ("bench", "model.pt"): "is a PyTorch pickle; bench times the deployed ONNX file",
    ("quantize", "{ck}", "--skip", "relu1", "pool"): "which hold no conv or linear weights",  # skipped nothing
    # evaluate's result files never replace the model scored (nor its checkpoint's other half) or someone's file
    ("evaluate", "{onnx}", "--out", "{onnx}", "--force"): "is the model this command reads",
    ("evaluate", "{ck}", "--out", "{ck}"): "is the model this command reads",
    ("evaluate", "{ck}", "--reliability", "{ck}"): "is the model this command reads",
    ("evaluate", "{ck}", "--out", "{file}"): "already exists; pass --force",
    # another input size: a checkpoint failed with a matrix-shape traceback, an ONNX file with no fix named
    ("evaluate", "{ck}", "--size", "56"): "was trained on 28 px images; --size 56 would feed it images of another size",
    ("evaluate", "{onnx}", "--size", "64"): "was trained on 28 px images; --size 64",
    ("predict", "{onnx}", "{dir}", "--threads", "-1"): "--threads: -1 is out of range",
    # refused before the run folder (and its fingerprint, which would refuse the next, valid run) appears
    ("train", "--epochs", "1", "--device", "cuda", "--out", "{dir}/run"): "no CUDA device is available",
    ("train", "--epochs", "1", "--out", "{file}/run"): "Not a directory; check the path",  # the system refuses it
    ("explain", "{ck}", "--n", "2", "--out", "maps.txt"): "explain writes a PNG figure; name the file .png",
    ("predict", "{onnx}", "{dir}", "--out", "p.txt"): "name the file .csv or .json, or pass --format csv|json",
    ("predict", "{onnx}", "{dir}", "--json", "--out", "p.csv"): "--json asks for JSON but --out p.csv names a CSV file",
}


@pytest.mark.parametrize("argv", list(NUMBER_CASES), ids=lambda a: "_".join(a))
def test_out_of_range_numbers_and_choices(argv, good_run, good_onnx, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text("datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\n")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "a_file").write_text("")
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    subs = {"{ck}": str(good_run / "best.safetensors"), "{onnx}": str(good_onnx), "{cfg}": str(tmp_path / "study.yaml"),
            "{dir}": str(tmp_path / "a_folder"), "{file}": str(tmp_path / "a_file")}
    given = [a.replace("{dir}/", subs["{dir}"] + "/").replace("{file}/", subs["{file}"] + "/") for a in argv]
    before = files_under(tmp_path)
    rc, out, err = run_cli([subs.get(a, a) for a in given], capsys)
    assert_clean_refusal(rc, out, err, NUMBER_CASES[argv])
    assert files_under(tmp_path) == before


def test_export_leaves_no_artifact_when_its_card_fails(good_run, tmp_path, monkeypatch, capsys):
    """An .onnx without its model card would pass for a finished export: a failed card removes it."""
    import qsal.pipeline
    from qsal.errors import QsalError

    def card_fails(*args, **kwargs):
        raise QsalError("the card could not be written")

    monkeypatch.setattr(qsal.pipeline, "write_card", card_fails)
    rc, out, err = run_cli(["export", good_run / "best.safetensors", "--out", tmp_path / "m.onnx"], capsys)
    assert_clean_refusal(rc, out, err, "the card could not be written")
    assert files_under(tmp_path) == set()


def test_a_forced_export_whose_card_fails_leaves_the_earlier_export(good_run, tmp_path, monkeypatch, capsys):
    """export --force over an earlier export: if the new card fails, the earlier file and its card stay as they
    were (the new pair is staged), never a new file beside the old card nor nothing at all."""
    import qsal.pipeline
    from qsal.errors import QsalError

    rc, _, _ = run_cli(["export", good_run / "best.safetensors", "--out", tmp_path / "m.onnx"], capsys)
    assert rc == 0 and files_under(tmp_path) >= {"m.onnx", "m.card.md", "m.card.json"}
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def card_fails(*args, **kwargs):
        raise QsalError("the card could not be written")

    monkeypatch.setattr(qsal.pipeline, "write_card", card_fails)
    rc, out, err = run_cli(["export", good_run / "best.safetensors", "--out", tmp_path / "m.onnx", "--force"], capsys)
    assert_clean_refusal(rc, out, err, "the card could not be written")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


YAML_CASES = {
    "non_utf8": (b"name: caf\xe9\ndatasets: [breastmnist]\n", "is not UTF-8 text"),
    "alias_bomb": (ALIAS_BOMB.encode(), "problem(s)"),
    "empty": (b"", "is empty; a study names at least its datasets"),
    "comments_only": (b"# nothing here\n", "is empty"),
    "scalar": (b"hello\n", "the top level must be a mapping"),
    "list": (b"- breastmnist\n- small_cnn\n", "the top level must be a mapping"),
    "meaningless_keys": (b"foo: 1\n", "foo: unknown key"),
    "name_only": (b"name: x\n", "datasets, models, methods: missing"),
    "invalid_yaml": (b"name: x\ndatasets: [breastmnist\n", "is not valid YAML: expected ',' or ']', but got "
                     "'<stream end>' at line 3, column 1; fix that line"),
    "tab_indent": (b"datasets:\n\t- breastmnist\n", "at line 2, column 1"),
    # two seeds 0 trained one cell folder from two workers at once
    "duplicate_seed": (b"datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\nseeds: [0, 0]\n",
                       "seeds[1]: 0 is listed twice; give each value once"),
    "duplicate_dataset": (b"datasets: [breastmnist, breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\n",
                          "datasets[1]: 'breastmnist' is listed twice"),
    "infinite_nested_values": (b"datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32, sgt]\n"
                               b"lr: {fp32: .inf}\nsgt: {lambda: .nan}\n",
                               "2 problem(s): lr.fp32: must be a finite number, got inf; sgt.lambda: must be a finite "
                               "number, got nan"),
    "huge_integer_lr": (b"datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\nlr: {fp32: 1" + b"0" * 400 + b"}\n",
                        "lr.fp32: 1000"),  # float() raised OverflowError: a traceback
    "data_dir_not_a_path": (b"datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\ndata_dir: 5\n",
                            "data_dir: must be a folder path (a string), got 5"),
    # a string "no" is truthy: it folded BatchNorm; -5 failed only after the parent had trained
    "pact_option_types": (b"datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [pact]\nbits: [4]\n"
                          b"pact: {4: {fold_bn: 'no', num_calibration: -5, skip: 5}}\n",
                          "pact.4: fold_bn: 'no' is not true or false; num_calibration: -5 is not a positive integer; "
                          "skip: 5 is not a list of layer names"),
    "pact_class_constants": (b"datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [pact]\nbits: [4]\n"
                             b"pact: {4: {version: 2}}\n", "pact.4: unknown option(s) ['version']"),
    "negative_seed": (b"datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\nseeds: [-1]\n",
                      "seeds: must be integers in 0 .. 2**32-1"),
    "wrong_types": (b"datasets: breastmnist\nmodels: [1]\nmethods: [fp32]\nepochs: {fp32: true}\n", "3 problem(s)"),
    "duplicate_key": (b"datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\nseeds: [0]\nseeds: [1]\n",
                      "key 'seeds' appears twice in one mapping (lines 4 and 5); keep one of them"),
    # each refused value is quoted as given (not TrainConfig's defaults in its place), NaN included
    "bad_train_values": (b"datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\n"
                         b"train: {epochs: 0, lr: .nan, batch_size: 0}\n",
                         "3 problem(s): train.epochs: must be positive, got 0; train.lr: must be a finite number, got "
                         "nan; train.batch_size: must be positive, got 0"),
    "bad_ema_decay": (b"datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\ntrain: {ema_decay: 1.5}\n",
                      "train.ema_decay: ema_decay 1.5 must be a number between 0 and 1 (such as 0.99), or null"),
    # a study's own folder (qsal.study.folders): relative to the config's folder, which holds no scans/
    "missing_study_folder": (b"datasets: [clinic]\nmodels: [small_cnn]\nmethods: [fp32]\n"
                             b"folders: {clinic: {path: scans, positive_class: malignant}}\n",
                             "folders.clinic.path: image folder {tmp}/scans does not exist; pass a folder with one "
                             "sub-folder per class ('scans' is read from the config file's folder, {tmp}: give the "
                             "path from there, or an absolute one)"),
    "folder_not_named": (b"datasets: [breastmnist, clinic]\nmodels: [small_cnn]\nmethods: [fp32]\n",
                         "datasets[1]: unknown value 'clinic'; choose from bloodmnist, breastmnist, chestmnist, "
                         "cifar10, dermamnist, mnist, octmnist, organamnist, organcmnist, organsmnist, pathmnist, "
                         "pneumoniamnist, retinamnist, tissuemnist; or, for your own images, name a folder under "
                         "folders: (e.g. folders: {clinic: {path: scans/, positive_class: ...}})"),
    "folder_path_in_datasets": (b"datasets: ['folder:scans']\nmodels: [small_cnn]\nmethods: [fp32]\n",
                                "datasets[0]: 'folder:scans': a study names its own folders under folders:"),
}


@pytest.mark.parametrize("case", list(YAML_CASES))
def test_bad_study_configs(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "study.yaml"
    cfg.write_bytes(YAML_CASES[case][0])
    before = files_under(tmp_path)
    rc, out, err = run_cli(["run", cfg, "--out", tmp_path / "run", "--no-progress"], capsys)
    assert_clean_refusal(rc, out, err, YAML_CASES[case][1].replace("{tmp}", str(tmp_path.resolve())))
    assert files_under(tmp_path) == before
    assert not (tmp_path / "run").exists()


def _run_folder(root: Path, kind: str) -> Path:
    """A run folder with one finished fp32 cell, damaged in one way."""
    run = root / "run"
    cell = run / "breastmnist/small_cnn/seed0/fp32"
    cell.mkdir(parents=True)
    (run / "run_config.json").write_text(json.dumps({"fingerprint": "x", "config": {"name": "t"}}))
    result = {"id": "breastmnist/small_cnn/seed0/fp32", "dataset": "breastmnist", "model": "small_cnn", "seed": 0,
              "kind": "fp32", "bits": 8, "observer": "", "label": "fp32", "test_auc": 0.8, "test_acc": 0.7}
    (cell / "result.json").write_text(json.dumps(result))
    np.save(cell / "saliency_maps.npy", np.zeros((2, 1, 28, 28), np.float32))
    np.save(cell / "explain_images.npy", np.zeros((2, 28, 28), np.float32))
    if kind == "truncated_result":
        (cell / "result.json").write_text(json.dumps(result)[:50])
    elif kind == "empty_result":
        (cell / "result.json").write_text("")
    elif kind == "result_is_a_list":
        (cell / "result.json").write_text("[1, 2]")
    elif kind == "result_without_fields":
        (cell / "result.json").write_text('{"test_auc": 0.5}')
    elif kind == "result_with_wrong_types":
        (cell / "result.json").write_text(json.dumps({**result, "bits": "8", "seed": None}))
    elif kind == "corrupt_run_config":
        (run / "run_config.json").write_bytes(b"\x00\x01{{{")
    elif kind == "garbage_npy":
        (cell / "saliency_maps.npy").write_bytes(b"\x93NUMPY garbage garbage")
    elif kind == "pickled_npy":
        np.save(cell / "explain_images.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif kind == "maps_of_another_shape":
        np.save(cell / "saliency_maps.npy", np.zeros((2, 1, 14, 14), np.float32))
    elif kind == "not_a_run":
        (run / "run_config.json").unlink()
    elif kind == "result_with_text_auc":
        (cell / "result.json").write_text(json.dumps({**result, "test_auc": "high"}))
    elif kind == "result_without_id":
        (cell / "result.json").write_text(json.dumps({k: v for k, v in result.items() if k != "id"}))
    elif kind == "result_with_huge_size":  # math.isfinite raised OverflowError: a traceback
        (cell / "result.json").write_text(json.dumps({**result, "size_bytes": 10 ** 400}))
    elif kind == "result_with_zero_size":  # divided by zero for the size ratio
        (cell / "result.json").write_text(json.dumps({**result, "size_bytes": 0}))
    elif kind == "result_with_auc_above_one":
        (cell / "result.json").write_text(json.dumps({**result, "test_auc": 1.7, "sensitivity": -0.2}))
    elif kind == "test_probs_above_one":
        np.save(cell / "test_probs.npy", np.array([[2.0, -1.0]] * 4, np.float32))
        np.save(cell / "test_labels.npy", np.zeros(4, np.int64))
    elif kind == "text_in_test_probs":
        (cell / "test_probs.npy").write_text("not an array")
        np.save(cell / "test_labels.npy", np.zeros(4, np.int64))
    elif kind == "test_probs_of_another_length":
        np.save(cell / "test_probs.npy", np.full((3, 2), 0.5, np.float32))
        np.save(cell / "test_labels.npy", np.zeros(4, np.int64))
    elif kind == "explain_indices_out_of_range":
        np.save(cell / "test_probs.npy", np.full((4, 2), 0.5, np.float32))
        np.save(cell / "test_labels.npy", np.zeros(4, np.int64))
        np.save(cell / "explain_indices.npy", np.array([0, 9]))
    else:
        raise ValueError(kind)
    return run


RUN_FOLDER_CASES = {
    "truncated_result": "is not valid JSON", "empty_result": "is not valid JSON",
    "result_is_a_list": "holds a list, not a dict", "result_with_wrong_types": "fields of the wrong type (bits, seed)", "result_without_fields": "is not a qsal cell result",
    "corrupt_run_config": "run_config.json is not valid JSON", "garbage_npy": "is not a readable .npy array",
    "pickled_npy": "is not a readable .npy array", "maps_of_another_shape": "do not match explain_images.npy",
    "not_a_run": "is not a qsal run directory",
    "result_with_text_auc": "measurements that are not finite numbers or out of their range (test_auc='high')",
    "result_with_auc_above_one": "out of their range (test_auc=1.7, sensitivity=-0.2)",
    "test_probs_above_one": "with probabilities in [0, 1]",
    "result_without_id": "is not a qsal cell result (missing ['id'])",
    "result_with_huge_size": "out of their range (size_bytes=1000000",
    "result_with_zero_size": "out of their range (size_bytes=0)",
    "text_in_test_probs": "test_probs.npy is not a readable .npy array",
    "test_probs_of_another_length": "do not describe the same test images with probabilities in [0, 1]",
    "explain_indices_out_of_range": "not indices of the 4 test images",
}


@pytest.mark.parametrize("kind", list(RUN_FOLDER_CASES))
def test_damaged_run_folders_in_report(kind, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = _run_folder(tmp_path, kind)
    before = files_under(tmp_path)
    rc, out, err = run_cli(["report", run], capsys)
    assert_clean_refusal(rc, out, err, RUN_FOLDER_CASES[kind])
    assert files_under(tmp_path) == before


def test_corrupt_run_config_in_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = _run_folder(tmp_path, "corrupt_run_config")
    cfg = tmp_path / "study.yaml"
    cfg.write_text("datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\n")
    before = files_under(tmp_path)
    rc, out, err = run_cli(["run", cfg, "--out", run, "--no-progress"], capsys)
    assert_clean_refusal(rc, out, err, "run_config.json is not valid JSON")
    assert files_under(tmp_path) == before


IMAGE_CASES = {
    "garbage_png": "cannot read image",
    "one_pixel_png": "is 1x1 px; resizing it to 28 px would upscale it more than 4x: remove it, or use the image at a "
                     "larger size",  # no size it allows is one qsal takes (12 px and up)
    "small_png": "is 9x6 px; resizing it to 28 px would upscale it more than 4x: remove it, or use the image at a "
                 "larger size, or lower --size to 24 or less",
    "float_tiff": "floating-point pixels", "garbage_dicom": "cannot read DICOM",
    "truncated_dicom": "DICOM", "dicom_without_pixels": "has no pixel data",
    "multiframe_dicom": "has 3 frames", "decompression_bomb": "decompression bomb",
    "multipage_tiff": "has 3 frames; qsal classifies single images",
}


@pytest.mark.parametrize("kind", list(IMAGE_CASES))
def test_bad_image_files_in_a_folder_dataset(kind, tmp_path, monkeypatch, capsys):
    if "dicom" in kind:
        pytest.importorskip("pydicom")
    if kind == "decompression_bomb":
        from PIL import Image

        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the same check as for a 180-megapixel file
    monkeypatch.chdir(tmp_path)
    folder = bad_image(image_folder(tmp_path / "imgs"), kind)
    before = files_under(tmp_path)
    rc, out, err = run_cli(["train", "--dataset", f"folder:{folder}", "--epochs", "1", "--out", tmp_path / "out",
                            "--no-progress"], capsys)
    assert_clean_refusal(rc, out, err, IMAGE_CASES[kind])
    assert files_under(tmp_path) == before


def test_resume_state_of_another_model_or_with_wrong_types(good_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cases = {"another_model": ("written for another model", ["--model", "edge_mbv2"]),
             "wrong_types": ("field 'model' is str", []), "garbage": ("cannot resume from", [])}
    for kind, (expected, extra) in cases.items():
        out = tmp_path / kind
        rc, _, err = run_cli(["train", "--epochs", "1", "--out", out, "--no-progress", *extra], capsys)
        assert rc == 0, err  # a real run, so the fingerprint matches and --resume reaches last.pt
        if kind == "another_model":
            (out / "last.pt").write_bytes((good_run / "last.pt").read_bytes())
        elif kind == "wrong_types":
            torch.save({"model": "weights", "optimizer": [], "epoch": "3"}, out / "last.pt")
        else:
            (out / "last.pt").write_bytes(b"PK\x03\x04 not a zip")
        before = files_under(tmp_path)
        rc, o, err = run_cli(["train", "--epochs", "1", "--out", out, "--resume", "--no-progress", *extra], capsys)
        assert_clean_refusal(rc, o, err, expected)
        assert files_under(tmp_path) == before, kind


def test_ray_backend_without_ray_is_refused_before_the_folder_is_touched(tmp_path, monkeypatch, capsys):
    import importlib.util

    if importlib.util.find_spec("ray") is not None:
        pytest.skip("ray is installed")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text("datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\n")
    rc, out, err = run_cli(["run", "study.yaml", "--backend", "ray", "--out", "run", "--no-progress"], capsys)
    assert_clean_refusal(rc, out, err, "the Ray backend needs ray")
    assert not (tmp_path / "run").exists()


def test_report_refuses_run_folders_among_files_and_a_run_folder_as_out(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = _run_folder(tmp_path, "result_with_zero_size").parent / "run"
    (run / "breastmnist/small_cnn/seed0/fp32/result.json").unlink()
    before = files_under(tmp_path)
    # two run folders were "not a qsal run directory (no run_config.json)", which both have
    rc, out, err = run_cli(["report", run, run], capsys)
    assert_clean_refusal(rc, out, err, "is a `qsal run` folder, which is reported on its own")
    # a report of files written into a run folder replaced that run's report.md
    rc, out, err = run_cli(["report", tmp_path / "m.onnx", "--out", run], capsys)
    assert_clean_refusal(rc, out, err, "is a `qsal run` folder; its report.md belongs to that run")
    assert files_under(tmp_path) == before
    rc, out, err = run_cli(["report", run, "--n-explain", "0"], capsys)  # was an IndexError traceback
    assert rc == 2 and "the number of images" in err


def test_output_into_a_closed_pipe_ends_quietly():
    # `qsal datasets | head -1`: the reader leaves before qsal writes; was a BrokenPipeError traceback, exit 1
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "qsal.cli", "datasets"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait() == 141 and "Traceback" not in err and err == ""


@pytest.mark.parametrize("kind", ["empty", "file", "other_folder"])
def test_a_study_out_that_is_not_a_study_folder(kind, tmp_path, monkeypatch, capsys):
    # --out "" ran the study into the working folder; a file failed late naming result.json; another folder was filled
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "study.yaml"
    cfg.write_text("datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\n")
    (tmp_path / "notes.txt").write_text("mine")
    out, expected = {"empty": ("", "--out is empty"), "file": (tmp_path / "notes.txt", "is a file; a study writes a folder"),
                     "other_folder": (tmp_path, "holds other files and is not a `qsal run` folder")}[kind]
    before = files_under(tmp_path)
    for dry in ([], ["--dry-run", "--no-estimate"]):
        rc, stdout, err = run_cli(["run", cfg, "--out", out, "--no-progress", *dry], capsys)
        assert_clean_refusal(rc, stdout, err, expected)
    assert files_under(tmp_path) == before


def test_a_study_config_that_is_a_device_is_named_as_such(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(["run", "/dev/null", "--out", tmp_path / "run"], capsys)  # was "not found"
    assert_clean_refusal(rc, out, err, "/dev/null is not a regular file; pass the study YAML file")


def test_a_nan_measurement_reads_as_not_measured(tmp_path, monkeypatch, capsys):
    # an older qsal wrote NaN (the Spearman agreement of constant maps); the row read "nan" and qsal run now redid the
    # cell: both read it as null, as qsal now writes it
    monkeypatch.chdir(tmp_path)
    run = _run_folder(tmp_path, "not_a_run").parent / "run"
    (run / "run_config.json").write_text(json.dumps({"fingerprint": "x", "config": {"name": "t"}}))
    cell = run / "breastmnist/small_cnn/seed0/fp32"
    result = json.loads((cell / "result.json").read_text())
    (cell / "result.json").write_text(json.dumps({**result, "agreement_spearman": float("nan")}))
    rc, out, err = run_cli(["report", run], capsys)
    assert rc == 0 and " nan " not in (run / "report.md").read_text().lower()
    from qsal.study.redo import finished

    assert finished(cell)


def test_a_folder_where_the_card_goes_is_named_as_such(good_run, tmp_path, capsys):
    (tmp_path / "m.card.md").mkdir()
    rc, out, err = run_cli(["export", good_run / "best.safetensors", "--out", tmp_path / "m.onnx"], capsys)
    assert_clean_refusal(rc, out, err, "m.card.md is a folder, where the model card of")
    assert "choose another --out" in err and files_under(tmp_path) == set()  # files only: the folder stays
