"""The CLI: user errors are one line on stderr with exit code 2, never a traceback."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qsal.cli import main


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "qsal.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args,message", [
    (["train", "--dataset", "nosuchset", "--epochs", "1"], "unknown dataset 'nosuchset'"),
    (["train", "--model", "vgg", "--epochs", "1"], "unknown model 'vgg'"),
    (["train", "--epochs", "0"], "--epochs: 0 is out of range"),
    (["evaluate", "missing.safetensors"], "checkpoint missing.safetensors not found"),
    (["bench", "missing.onnx"], "model file missing.onnx not found"),
    (["bench", "."], ". is a folder; bench times one ONNX file: pass its path (qsal export writes one)"),
    (["quantize", "m.safetensors", "--method", "weight-only", "--bits", "3"],
     "bits=3 is not supported by weight-only (ONNX stores INT4 and INT8 weights); use one of 4, 8 (--bits)"),
    (["quantize", "m.safetensors", "--method", "pact", "--weight-bits", "7"],
     "--weight-bits sets PTQ's weights apart from its activations (--bits); --method pact takes one --bits for both"),
    (["quantize", "m.safetensors", "--method", "weight-only", "--weight-bits", "7"],
     "--method weight-only quantizes weights only: give their bits with --bits: drop --weight-bits"),
    (["export", "m.safetensors", "--out", "m.txt"], "--out m.txt: export writes an ONNX file; name it .onnx"),
    (["export", "model.onnx"], "model.onnx is already an ONNX file; export takes the .safetensors checkpoint"),
])
def test_user_errors_are_one_line_exit_2(args, message, tmp_path):
    proc = _run(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_train_evaluate_quantize_export_bench_explain_on_real_data(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--epochs", "2", "--out", str(run), "--no-progress", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert 0.0 <= trained["test_auc"] <= 1.0 and (run / "best.safetensors").is_file()
    assert main(["evaluate", str(run / "best.safetensors"), "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 156  # BreastMNIST test split
    capsys.readouterr()
    q = tmp_path / "ptq"
    # 7-bit weights: on integer kernels exactly on any x86 CPU, with VNNI or without (runtime.sums_fit_int16)
    assert main(["quantize", str(run / "best.safetensors"), "--method", "ptq", "--observer", "percentile",
                 "--weight-bits", "7", "--num-calibration", "128", "--out", str(q), "--json"]) == 0
    # whose numbers these are: the fake-quantized model's, and where the deployed file's come from
    assert json.loads(capsys.readouterr().out)["scored"].startswith(
        "the fake-quantized PyTorch model (the deployed file can differ a little: `qsal export` it, then `qsal "
        "evaluate")
    assert main(["export", str(q / "best.safetensors"), "--out", str(tmp_path / "m.onnx"), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert exported["quant"] == "ptq" and exported["size_bytes"] > 0
    assert exported["bits"] == 7 and exported["runs_on"] == "integer kernels (ptq W7A8)"
    card = (tmp_path / "m.card.md").read_text()
    assert "Its integer sums fit in int16 (at most 32130), so it runs on integer kernels on x86 CPUs without VNNI" in card
    assert main(["bench", str(tmp_path / "m.onnx"), "--threads", "1", "--seconds", "0.2",
                 "--out", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "runs on: integer kernels (ptq W7A8)" in out and "here not" not in out
    bench = json.loads((tmp_path / "b.json").read_text())
    runs = bench["runs"]
    assert {r["batch"] for r in runs} == {1, 64} and all(r["latency_ms_p50"] > 0 for r in runs)
    # what was timed: the file by content, the settings, the kernels its export measured
    from qsal.run_folder import file_sha256

    assert bench["sha256"] == file_sha256(tmp_path / "m.onnx") and bench["model"] == str(tmp_path / "m.onnx")
    assert bench["measured"]["warmup_calls"] == 5 and bench["measured"]["min_seconds_per_configuration"] == 0.2
    assert bench["deployed"]["integer_kernels"] is True and bench["deployed"]["weights_dequantized_per_call"] == 0
    assert main(["explain", str(tmp_path / "m.onnx"), "--method", "occlusion", "--n", "2",
                 "--out", str(tmp_path / "onnx.png")]) == 0
    assert (tmp_path / "onnx.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["explain", str(tmp_path / "m.onnx"), "--method", "gradient", "--n", "2"]) == 2


def test_already_quantized_checkpoint_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", "--epochs", "1", "--out", str(run), "--no-progress", "--precision", "fp32"])
    assert json.loads((run / "best.json").read_text())["precision"]["training"] == "fp32"  # --precision reached fit
    main(["quantize", str(run / "best.safetensors"), "--out", str(tmp_path / "q"), "--num-calibration", "64"])
    capsys.readouterr()
    assert main(["quantize", str(tmp_path / "q/best.safetensors"), "--out", str(tmp_path / "q2")]) == 2
    assert "already quantized" in capsys.readouterr().err


def test_export_says_which_kernels_run_the_file_on_a_cpu_without_vnni(breast_run, tmp_path, capsys, monkeypatch):
    import qsal.runtime

    run, _ = breast_run
    assert main(["quantize", str(run / "best.safetensors"), "--out", str(tmp_path / "q"), "--num-calibration", "64",
                 "-q"]) == 0
    monkeypatch.setattr(qsal.runtime, "integer_kernels_saturate", lambda: True)  # x86 without VNNI
    monkeypatch.delenv("QSAL_INTEGER_KERNELS", raising=False)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "q/best.safetensors"), "--out", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "here (no VNNI)" in out and "exact, slower u8 x u8" in out and "u8u8_kernels" not in out
    assert main(["export", str(tmp_path / "q/best.safetensors"), "--out", str(tmp_path / "m.onnx"), "--force",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["u8u8_kernels"] == qsal.runtime.SATURATION_NOTE


def test_guiding_the_fine_tune_of_a_plain_fp32_parent_is_noted(breast_run, tmp_path, capsys):
    run, _ = breast_run
    capsys.readouterr()
    assert main(["quantize", str(run / "best.safetensors"), "--method", "pact", "--bits", "4", "--epochs", "1",
                 "--saliency-guided", "--out", str(tmp_path / "q"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was not trained saliency-guided; qsal's SGT+PACT fine-tunes an SGT parent" in err


def test_per_tensor_reaches_every_method_that_has_weight_scales(breast_run, tmp_path):
    # --per-tensor was dropped for weight-only and PACT, while the records said per-channel
    run, _ = breast_run
    ck = str(run / "best.safetensors")
    assert main(["quantize", ck, "--method", "weight-only", "--per-tensor", "--out", str(tmp_path / "w")]) == 0
    assert json.loads((tmp_path / "w/best.json").read_text())["quant"]["per_channel"] is False
    assert main(["quantize", ck, "--method", "pact", "--bits", "4", "--epochs", "1", "--per-tensor", "--no-progress",
                 "--out", str(tmp_path / "p")]) == 0
    assert json.loads((tmp_path / "p/best.json").read_text())["quant"]["weight_per_channel"] == "none"


def test_pact_saliency_guided_training_from_the_cli_reloads_and_explains(tmp_path, capsys):
    out = tmp_path / "sgt_pact"
    assert main(["train", "--epochs", "2", "--pact-bits", "4", "--saliency-guided", "--out", str(out), "--no-progress"]) == 0
    meta = json.loads((out / "best.json").read_text())
    assert meta["quant"]["method"] == "pact" and meta["quant"]["bits"] == 4 and meta["step"]["step"] == "saliency_guided"
    record = json.loads((out / "metrics.json").read_text())  # the whole run: 1 FP32 warm-up epoch, then 1 of PACT
    assert record["fp32_warmup_epochs"] == 1 and record["config"]["epochs"] == 1
    warm, pact = (torch.load(d / "last.pt", weights_only=True)["seconds"] for d in (out / "fp32_warmup", out))
    assert record["train_seconds"] == pytest.approx(warm + pact, rel=0.05)
    assert main(["explain", str(out / "best.safetensors"), "--method", "gradcam", "--n", "2",
                 "--out", str(tmp_path / "gc.png")]) == 0
    assert (tmp_path / "gc.png").stat().st_size > 1000
    # SGT+PACT as a fine-tune of that run's FP32 warm-up: its metrics.json says what made it, as train's does
    assert json.loads((out / "fp32_warmup/best.json").read_text())["step"]["step"] == "saliency_guided"
    capsys.readouterr()
    assert main(["quantize", str(out / "fp32_warmup" / "best.safetensors"), "--method", "pact", "--bits", "4", "--epochs", "1", "--saliency-guided",
                 "--out", str(tmp_path / "q"), "--no-progress"]) == 0
    assert "was not trained saliency-guided" not in capsys.readouterr().err  # an SGT parent, as qsal's SGT+PACT
    record = json.loads((tmp_path / "q" / "metrics.json").read_text())
    assert record["method"] == "sgt+pact-4bit" and record["saliency_guided"]["step"] == "saliency_guided"
    assert record["config"]["epochs"] == 1 and record["best_epoch"] == 1 and record["dataset"] == "breastmnist"


@pytest.mark.parametrize("args,message", [
    (["train", "--epochs", "1", "--positive-class", "benign"], "positive class 'benign' is not a class of breastmnist"),
    (["train", "--epochs", "1", "--operating-point", "yuden"], "operating point 'yuden' is not one of"),
])
def test_decision_options_fail_before_training(args, message, tmp_path):
    proc = _run(*args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not any((tmp_path / "runs").rglob("best.safetensors"))


def test_run_only_pattern_that_matches_nothing_is_one_line_and_touches_nothing(tmp_path):
    cfg = tmp_path / "study.yaml"
    cfg.write_text("name: t\ndatasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\nseeds: [0]\n")
    for dry in ([], ["--dry-run"]):
        proc = _run("run", str(cfg), "--out", str(tmp_path / "out"), "--only", "retinamnist/*", *dry, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines() == [
            "error: --only 'retinamnist/*' matches no cell group; groups are named dataset/model/seedN (this study: "
            "breastmnist/small_cnn/seed0)"]
        assert not (tmp_path / "out").exists()


def test_run_data_dir_is_checked_before_the_folder_is_made_and_does_not_change_the_fingerprint(tmp_path, shared_data,
                                                                                               monkeypatch):
    cfg = tmp_path / "study.yaml"
    cfg.write_text("name: t\ndatasets: [retinamnist]\nmodels: [small_cnn]\nmethods: [fp32]\nseeds: [0]\n"
                   "epochs: {fp32: 1}\nmeasure: {latency: false, saliency: false}\n")
    monkeypatch.delenv("QSAL_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.medmnist to fall back on
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _run("run", str(cfg), "--out", str(tmp_path / "out"), "--data-dir", str(empty), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and str(empty) in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before any cell or lock file

    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--data-dir", str(shared_data), "--no-progress",
                 "--quiet"]) == 0
    stamp = json.loads((tmp_path / "out" / "run_config.json").read_text())
    assert stamp["config"]["data_dir"] == str(Path(shared_data).resolve())  # stored resolved: cwd-independent
    from qsal.study.config import load_run_config

    assert stamp["fingerprint"] == load_run_config(cfg).fingerprint()  # where files are is not what the study is
    assert json.loads((tmp_path / "out" / "retinamnist/small_cnn/seed0/fp32/result.json").read_text())["dataset"] == \
        "retinamnist"
    # Nothing left to do: the data is not needed, and --dry-run on the folder says so.
    proc = _run("run", str(cfg), "--out", str(tmp_path / "out"), "--data-dir", str(empty), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0 and "out: 1 of these 1 cells finished; a run would redo 0 of them" in proc.stdout
    assert "different config" not in proc.stdout
    changed = tmp_path / "changed.yaml"  # the same study with another lr: the dry run says a run needs --force
    changed.write_text(cfg.read_text() + "\ntrain: {lr: 0.002}\n")
    proc = _run("run", str(changed), "--out", str(tmp_path / "out"), "--data-dir", str(empty), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 0 and "made by a different config: train.lr: unset -> 0.002; a run there needs --force" \
        in proc.stdout
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--data-dir", str(empty), "--no-progress",
                 "--quiet"]) == 0


def _subcommands():
    from qsal.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_help_shows_every_default(name):
    sub = _subcommands()[name]
    text = " ".join(sub.format_help().split())  # argparse wraps lines; compare on single spaces
    assert "%%" not in text
    for action in sub._actions:
        if not action.option_strings or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS:
            continue
        assert f"(default: {action.default})" in text, (name, action.dest)
    for action in sub._actions:  # every flag says what it is
        assert action.help, (name, action.dest)


def test_version_and_percent_signs():
    proc = _run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("qsal ")
    proc = _run("evaluate", "--help")
    assert "95% CIs" in proc.stdout and "95%%" not in proc.stdout


def test_non_tty_training_writes_one_plain_line_per_epoch(tmp_path):
    proc = _run("train", "--epochs", "3", "--out", str(tmp_path / "t"), cwd=tmp_path)  # pipes: not a terminal
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert [l.split()[1] for l in lines] == ["1/3", "2/3", "3/3"], proc.stderr
    assert "\r" not in proc.stderr + proc.stdout and "\x1b" not in proc.stderr + proc.stdout
    table = dict(l.split(None, 1) for l in proc.stdout.strip().splitlines())  # key  value, aligned
    assert 0.0 <= float(table["test_auc"]) <= 1.0 and len(table["test_auc"]) <= 6  # 4 significant digits
    quiet = _run("train", "--epochs", "1", "--out", str(tmp_path / "q"), "--quiet", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_only_an_os_error_about_a_users_path_becomes_one_line():
    """`--out` under a file or a read-only folder is the user's to mend (one line, exit 2); a file missing from
    qsal's own install, or an errno no path choice mends, is a bug and keeps its traceback."""
    import errno
    from pathlib import Path

    import qsal
    from qsal.cli.app import _is_user_path_error

    assert _is_user_path_error(NotADirectoryError(errno.ENOTDIR, "Not a directory", "/tmp/a_file/run"))
    assert _is_user_path_error(PermissionError(errno.EACCES, "Permission denied", "/proc/qsal_out"))
    own = str(Path(qsal.__file__).parent / "data" / "missing_table.json")
    assert not _is_user_path_error(FileNotFoundError(errno.ENOENT, "No such file or directory", own))
    assert not _is_user_path_error(OSError(errno.EIO, "Input/output error", "/tmp/x"))
    assert not _is_user_path_error(OSError(errno.ENOENT, "No such file or directory"))  # no path named


def test_demo_force_reaches_run_demo(monkeypatch, tmp_path, capsys):
    """`qsal demo --force` is the flag a refused older demo folder asks for: it must reach run_demo."""
    import qsal.study.demo
    from qsal.errors import QsalError

    seen = {}

    def fake_run_demo(**kwargs):
        seen.update(kwargs)
        raise QsalError("stopped after the arguments were seen")

    monkeypatch.setattr(qsal.study.demo, "run_demo", fake_run_demo)
    assert main(["demo", "--force", "--quick", "--out", str(tmp_path / "d")]) == 2
    assert seen["force"] is True and seen["quick"] is True and seen["out_dir"] == str(tmp_path / "d")
    assert main(["demo", "--out", str(tmp_path / "d")]) == 2 and seen["force"] is False


def test_quantize_can_average_the_fine_tuned_weights(breast_run, tmp_path, capsys):
    """`qsal quantize --method qat --ema-decay 0.9`: the saved QAT model is the average, with whole zero points."""
    from safetensors.torch import load_file

    run, _ = breast_run
    out = tmp_path / "qat"
    assert main(["quantize", str(run / "best.safetensors"), "--method", "qat", "--epochs", "1", "--ema-decay", "0.9",
                 "--shift-px", "2", "--hflip", "--rotate-deg", "10", "--out", str(out), "--no-progress"]) == 0
    meta = json.loads((out / "best.json").read_text())
    assert meta["train"]["ema_decay"] == 0.9 and meta["weight_ema"]["decay"] == 0.9
    # the study's fine-tunes inherit their parent's augmentation; on the command line it is given the same way
    assert (meta["train"]["shift_px"], meta["train"]["hflip"], meta["train"]["rotate_deg"]) == (2, True, 10.0)
    zero_points = [v for k, v in load_file(str(out / "best.safetensors")).items() if k.endswith("zero_point")]
    assert zero_points and all(float(z) == round(float(z)) for zp in zero_points for z in zp.flatten())


def test_the_evaluate_table_says_how_each_count_decided():
    from qsal.cli.output import metrics_table

    base = {"n": 10, "per_class_recall": {"a": 1.0, "b": 0.5}, "balanced_accuracy": 0.75, "macro_f1": 0.7,
            "sensitivity": None}  # Metrics.to_dict keeps a multi-class model's sensitivity key, as None
    multi = metrics_table({**base, "task": "multi-class"})
    assert "balanced_accuracy (most probable class)" in multi and "macro_f1 (most probable class)" in multi
    binary = metrics_table({**base, "task": "binary-class", "sensitivity": 0.5})
    assert "balanced_accuracy @ 0.5" in binary and "per_class_recall @ 0.5" in binary
    assert "acc (p > 0.5 per label)" in metrics_table({**base, "acc": 0.9, "task": "multi-label, binary-class"})
    # on a CPU without VNNI the row that says what was scored names the kernels, and the why has a readable key
    exact = metrics_table({**base, "task": "binary-class", "artifact": True, "u8u8_kernels": "this CPU has no VNNI"})
    assert exact["scored"] == "the ONNX file run by onnxruntime on its exact u8 x u8 kernels (no VNNI)"
    assert exact["kernels (no VNNI here)"] == "this CPU has no VNNI"
    forced = metrics_table({**base, "task": "binary-class", "artifact": True, "saturating_kernels": "forced"})
    assert forced["scored"].endswith("on the fast kernels that saturate here (QSAL_INTEGER_KERNELS=1)")
    plain = metrics_table({**base, "task": "binary-class", "artifact": True})
    assert plain["scored"] == "the ONNX file run by onnxruntime"
    # only a confidence interval prints as lo–hi; two images' probabilities are a list
    from qsal.cli.output import format_value

    assert format_value([0.6695, 0.6569], "probability") == "[0.6695, 0.6569]"
    assert format_value([0.65, 0.82], "ci.auc") == format_value([0.65, 0.82], "auc_95ci") == "0.65–0.82"
    # explain's predicted classes: BreastMNIST's 'normal, benign' unquoted made 2 names read as 3
    assert format_value(["normal, benign", "malignant"], "predicted_class") == '["normal, benign", malignant]'


def test_a_quantized_child_takes_its_parents_temperature_scaling_unless_turned_off(tmp_path, capsys):
    run = tmp_path / "fp32"
    assert main(["train", "--epochs", "1", "--out", str(run), "--no-progress", "--temperature-scaling", "-q"]) == 0
    scaled = {}
    for name, flag in (("inherited", []), ("off", ["--no-temperature-scaling"])):
        assert main(["quantize", str(run / "best.safetensors"), "--method", "ptq", "--out", str(tmp_path / name),
                     "--num-calibration", "64", "-q", *flag]) == 0
        scaled[name] = json.loads((tmp_path / name / "best.json").read_text())["decision"]
    assert scaled["inherited"]["temperature_scaling"] is True
    assert scaled["off"]["temperature_scaling"] is False and scaled["off"]["temperature"] == 1.0


def test_evaluate_table_names_the_decision_counts_and_each_ci_method():
    """The terminal table labels PPV/NPV/accuracy at the operating point, the prevalence they hold at, and which CI
    came from the bootstrap and which from the Wilson interval (one line, keys grouped by method)."""
    import numpy as np

    from qsal.cli.output import metrics_table
    from qsal.metrics import compute_metrics

    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 120)
    logits = np.stack([np.zeros(120), y * 1.5 + rng.normal(0, 1, 120)], 1)
    op = {"rule": "youden", "threshold": 0.4, "chosen_on": "validation"}
    m = compute_metrics(y, logits, "binary-class", class_names=["normal", "pneumonia"], positive_label=1,
                        operating_point=op, n_bootstrap=20).to_dict()
    table = metrics_table(m)
    assert table["PPV @ op"] == m["ppv_at_op"] and table["accuracy @ op"] == m["accuracy_at_op"]
    assert table["confusion @ op (true x decided: normal | pneumonia)"] == m["confusion_at_op"]
    assert table["prevalence of pneumonia (PPV/NPV hold at it)"] == m["prevalence"]
    assert table["95% CI methods"] == ("auc, acc: percentile bootstrap, 20 resamples, seed 0; sensitivity @ 0.5, "
                                       "specificity @ 0.5, sensitivity @ op, specificity @ op, PPV @ op, NPV @ op, "
                                       "accuracy @ op: Wilson score")


def test_a_table_column_groups_thousands_alike(capsys):
    """qsal bench printed '8479' above '12,342' in one img/s column."""
    from qsal.cli.output import print_rows

    print_rows([{"batch": 1, "img/s": 8479}, {"batch": 64, "img/s": 12342}, {"batch": 128, "img/s": 812.5}])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in lines[1:]] == ["8,479", "12,342", "812.5"]
    print_rows([{"seed": 2026, "n": 5}])  # no number needs separators: none get them
    assert capsys.readouterr().out.splitlines()[1].split() == ["2026", "5"]


def test_evaluate_table_of_a_multi_class_model_has_no_binary_decision_rows():
    import numpy as np

    from qsal.cli.output import metrics_table
    from qsal.metrics import compute_metrics

    rng = np.random.default_rng(0)
    m = compute_metrics(rng.integers(0, 3, 60), rng.normal(size=(60, 3)), "multi-class", class_names=["a", "b", "c"],
                        n_bootstrap=0).to_dict()
    table = metrics_table(m)
    assert not [k for k in table if "@ op" in k or "prevalence" in k or "PPV" in k or k == "95% CI methods"]
