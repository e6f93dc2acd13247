import json

import pytest
import torch

from qsal.errors import QsalError
from qsal.study.config import parse_run_config
from qsal.study.results import collect_results, report_run
from qsal.study.cell import explanation_measures
from qsal.study.grid import group_name, plan_groups, select_groups
from qsal.study.runner import run_study

TINY = {"name": "tiny", "datasets": ["breastmnist"], "models": ["small_cnn"], "methods": ["fp32", "ptq", "pact"],
        "bits": [4], "observers": ["minmax"], "seeds": [0], "epochs": {"fp32": 1, "finetune": 1},
        "measure": {"latency": False, "saliency": True, "n_explain": 8}}


def test_every_config_problem_is_listed_with_its_path():
    bad = {**TINY, "models": ["vgg"], "bits": [9], "epochs": {"fp32": 0, "extra": 1}, "colour": "red"}
    with pytest.raises(QsalError) as e:
        parse_run_config(bad, "study.yaml")
    msg = str(e.value)
    assert "5 problem(s)" in msg
    for path in ("colour: unknown key", "models[0]: unknown value 'vgg'", "bits[0]: unknown value 9",
                 "epochs.fp32: must be positive", "epochs.extra: unknown key"):
        assert path in msg
    with pytest.raises(QsalError) as e:  # each with its fix, in the words configs use (sgt's lambda, not lam)
        parse_run_config({**TINY, "methods": "fp32", "seeds": [], "sgt": {"lamda": 1}}, "study.yaml")
    for said in ("methods: must be a non-empty list, got 'fp32' (write it in brackets: methods: [fp32])",
                 "seeds: must be a non-empty list, got [] (name at least one)",
                 "sgt.lamda: unknown key; known: k, lambda, target"):
        assert said in str(e.value)


def test_config_values_that_cannot_run_or_read_as_text_are_named_and_plain_training_is_allowed():
    # YAML 1.1 reads 1e-3 as text: taken as the number meant (tests/study/test_config.py)
    assert parse_run_config({**TINY, "lr": {"fp32": "1e-3"}}, "study.yaml").lr.fp32 == 0.001
    with pytest.raises(QsalError) as e:  # reflect padding cannot draw it: refused here, not by every cell
        parse_run_config({**TINY, "schedules": [{"datasets": ["breastmnist"], "train": {"shift_px": 28}}]}, "s.yaml")
    assert ("train.shift_px 28 is as large as the images (28x28 px); use a shift below 28 px (breastmnist/small_cnn)"
            in str(e.value))
    assert "finetune.shift_px" not in str(e.value)  # inherited from train: one setting to fix, named once
    with pytest.raises(QsalError) as e:  # a fine-tune's own shift is checked on its own
        parse_run_config({**TINY, "finetune": {"shift_px": 30}}, "s.yaml")
    assert "finetune.shift_px 30 is as large as the images (28x28 px)" in str(e.value) and "train.shift" not in str(e.value)
    with pytest.raises(QsalError) as e:  # set to the same value in both: both named, both to fix
        parse_run_config({**TINY, "train": {"shift_px": 28}, "finetune": {"shift_px": 28}}, "s.yaml")
    assert "train.shift_px 28" in str(e.value) and "finetune.shift_px 28" in str(e.value)
    assert parse_run_config({**TINY, "train": {"shift_px": 27}}).train["shift_px"] == 27
    assert parse_run_config({**TINY, "sgt": {"k": 0}}).sgt.k == 0  # k = 0 masks nothing: plain training
    # settings no cell uses, or that another setting overrides, in a config a user wrote (a recorded config holds
    # every field, defaults included)
    with pytest.raises(QsalError) as e:
        parse_run_config({**TINY, "methods": ["fp32", "ptq"], "pact": {4: {"fold_bn": False}}, "sgt": {"k": 0.9},
                          "train": {"epochs": 5}}, "s.yaml", authored=True)
    assert ("pact: set, but no method uses it (pact, sgt+pact)" in str(e.value)
            and "sgt: set, but no method uses it" in str(e.value)
            and "epochs.fp32 and train.epochs both set; train.epochs wins: keep one" in str(e.value)
            # bits and the fine-tune's epochs with no PACT or fine-tune cell: accepted silently before
            and "bits: set, but no method uses it (pact, sgt+pact)" in str(e.value)
            and "epochs.finetune: set, but no method uses it" in str(e.value))
    with pytest.raises(QsalError) as e:
        parse_run_config({**TINY, "methods": ["fp32"], "bits": [4], "epochs": {"fp32": 1},
                          "schedules": [{"models": ["small_cnn"], "finetune": {"epochs": 3}}],
                          "measure": {"saliency": False, "n_explain": 4}}, "s.yaml", authored=True)
    assert "schedules[0].finetune: set, but no method fine-tunes" in str(e.value)
    assert "measure.n_explain: set, but measure.saliency is false" in str(e.value)
    with pytest.raises(QsalError, match="sgt.lambda and sgt.lam both set"):  # the last one silently won
        parse_run_config({**TINY, "methods": ["fp32", "sgt"], "sgt": {"lambda": 1.0, "lam": 2.0}}, "s.yaml")
    recorded = parse_run_config({**TINY, "methods": ["fp32", "ptq"], "train": {"epochs": 5}}).to_dict()
    assert parse_run_config(recorded).train["epochs"] == 5


def test_a_config_data_dir_that_is_not_a_folder_is_named_as_the_configs(tmp_path, capsys):
    import yaml

    from qsal.cli import main

    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({**TINY, "data_dir": str(tmp_path / "missing")}))
    assert main(["run", str(config), "--out", str(tmp_path / "o"), "--dry-run", "--no-estimate"]) == 2
    err = capsys.readouterr().err
    assert f"data_dir {tmp_path / 'missing'} in {config} is not a folder" in err and "(--data-dir)" not in err


def test_plan_puts_parents_first_and_the_long_sgt_training_after_fp32s_children():
    cfg = parse_run_config({**TINY, "methods": ["sgt+pact", "qat", "fp32", "pact"], "bits": [8, 2], "seeds": [0, 1]})
    groups = plan_groups(cfg)
    assert len(groups) == 2
    assert [c.label for c in groups[0]] == ["fp32", "qat-int8", "pact-8", "pact-2", "sgt", "sgt+pact-8", "sgt+pact-2"]
    for group in groups:  # every cell's float parent runs before it
        order = [c.label for c in group]
        assert all(c.parent is None or order.index(c.parent) < order.index(c.label) for c in group)


def test_only_selects_groups_and_runs_them_in_the_patterns_order():
    cfg = parse_run_config({**TINY, "datasets": ["breastmnist", "retinamnist"], "seeds": [0, 1]})
    name = group_name
    groups = plan_groups(cfg)
    assert [name(g) for g in select_groups(groups, None)] == [name(g) for g in groups]
    assert [name(g) for g in select_groups(groups, ["retinamnist/*/seed1", "*"])] == [
        "retinamnist/small_cnn/seed1", "breastmnist/small_cnn/seed0", "breastmnist/small_cnn/seed1",
        "retinamnist/small_cnn/seed0"]
    assert [name(g) for g in select_groups(groups, ["*/seed0"])] == ["breastmnist/small_cnn/seed0",
                                                                    "retinamnist/small_cnn/seed0"]
    with pytest.raises(QsalError, match="'pneumoniamnist/\\*' matches no cell group; groups are named"):
        select_groups(groups, ["breastmnist/*", "pneumoniamnist/*"])


def test_only_runs_the_selected_group_alone(tmp_path):
    cfg = parse_run_config({**TINY, "methods": ["fp32"], "seeds": [0, 1],
                            "measure": {"latency": False, "saliency": False}})
    statuses = run_study(cfg, tmp_path, progress=False, only=["*/seed1"])
    assert [(s["id"], s["status"]) for s in statuses] == [("breastmnist/small_cnn/seed1/fp32", "done")]
    assert not (tmp_path / "breastmnist/small_cnn/seed0").exists()
    run_study(cfg, tmp_path, progress=False, only=["*/seed0"])  # statuses.json keeps seed 1's, in plan order
    recorded = json.loads((tmp_path / "statuses.json").read_text())
    assert [(s["id"], s["status"]) for s in recorded] == [("breastmnist/small_cnn/seed0/fp32", "done"),
                                                          ("breastmnist/small_cnn/seed1/fp32", "done")]



def test_statuses_are_written_as_each_group_ends_so_a_stopped_run_says_what_it_finished(tmp_path, monkeypatch):
    import qsal.study.runner as runner

    cfg = parse_run_config({**TINY, "methods": ["fp32"], "seeds": [0, 1], "measure": {"latency": False,
                                                                                     "saliency": False}})
    real, calls = runner.run_group, []

    def stopped_after_the_first_group(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # Ctrl-C during the second group
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_group", stopped_after_the_first_group)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, tmp_path, progress=False)
    recorded = json.loads((tmp_path / "statuses.json").read_text())
    assert [(s["id"], s["status"]) for s in recorded] == [("breastmnist/small_cnn/seed0/fp32", "done")]


def test_run_resume_failure_isolation_and_report(tmp_path, monkeypatch):
    import qsal.pipeline

    cfg = parse_run_config(TINY)
    real = qsal.pipeline.quantize_checkpoint

    def flaky(checkpoint, qconfig, *a, **kw):
        if qconfig.method == "pact":
            raise RuntimeError("simulated crash in the pact cell")
        return real(checkpoint, qconfig, *a, **kw)

    monkeypatch.setattr(qsal.pipeline, "quantize_checkpoint", flaky)
    statuses = run_study(cfg, tmp_path, progress=False)
    by_id = {s["id"].split("/")[-1]: s["status"] for s in statuses}
    assert by_id["fp32"] == "done" and by_id["ptq-int8-minmax"] == "done"
    assert by_id["pact-4"].startswith("failed: RuntimeError")
    err = json.loads((tmp_path / "breastmnist/small_cnn/seed0/pact-4/error.json").read_text())
    assert "simulated crash" in err["error"]
    cell = tmp_path / "breastmnist/small_cnn/seed0/fp32"
    for f in ("config.json", "best.safetensors", "model.onnx", "result.json", "saliency_maps.npy", "log.txt"):
        assert (cell / f).is_file(), f
    # every cell scores its artifact on validation too; FP32's is the PyTorch model's best-epoch score
    best_val = json.loads((cell / "best.json").read_text())["val"]
    result = json.loads((cell / "result.json").read_text())
    assert result["val_auc"] == pytest.approx(best_val["val_auc"], abs=2e-3)
    assert 0 < json.loads((cell.parent / "ptq-int8-minmax/result.json").read_text())["val_auc"] <= 1
    monkeypatch.setattr(qsal.pipeline, "quantize_checkpoint", real)
    statuses = run_study(cfg, tmp_path, progress=False)  # rerun: finished cells skipped, failed one retried
    by_id = {s["id"].split("/")[-1]: s["status"] for s in statuses}
    assert by_id["fp32"].startswith("skipped") and by_id["pact-4"] == "done"
    assert not (tmp_path / "breastmnist/small_cnn/seed0/pact-4/error.json").exists()
    collected = collect_results(tmp_path)
    assert [r["model"] for r in collected["rows"]] == ["fp32", "ptq-int8-minmax", "pact-4"]
    assert collected["rows"][1]["agreement_spearman"] > 0.5  # PTQ maps stay close to FP32's
    assert collected["rows"][2]["test_acc_by_seed"] == {"seed0": json.loads(
        (tmp_path / "breastmnist/small_cnn/seed0/pact-4/result.json").read_text())["test_acc"]}  # for paired diffs
    assert [(m["trained_on"], m["cells"]) for m in collected["machines"]] == [("CPU", 3)]
    moved = tmp_path / "breastmnist/small_cnn/seed0/pact-4/result.json"  # as if resumed on a lent GPU
    result = json.loads(moved.read_text())
    result["environment"]["gpu"] = "NVIDIA H200"
    moved.write_text(json.dumps(result))
    rep = report_run(tmp_path)
    assert "pact-4" in rep["table"] and (tmp_path / "report.html").is_file()
    md = (tmp_path / "report.md").read_text()
    where = md.split("## Where the cells ran")[1].split("##")[0]
    assert "| CPU |" in where and "| NVIDIA H200 |" in where and "| 2 | breastmnist |" in where
    assert result["quant_config"]["method"] == "pact" and "Not one method across seeds" not in md
    # a second seed of the row made by another PACTConfig version: out of date for the folder's config, so named and
    # left out of the row's mean (it mixed methods before; the config names seed 1 too: a cell of a seed it does not
    # name is left out of the report)
    stamp = tmp_path / "run_config.json"
    recorded = json.loads(stamp.read_text())
    stamp.write_text(json.dumps({**recorded, "config": {**recorded["config"], "seeds": [0, 1]}}))
    other = tmp_path / "breastmnist/small_cnn/seed1/pact-4"
    other.mkdir(parents=True)
    seed1 = "breastmnist/small_cnn/seed1/pact-4"

    def write(**fields):
        (other / "result.json").write_text(json.dumps({**result, "seed": 1, "id": seed1, **fields}))
        return collect_results(tmp_path, grids=False)

    collected = write(quant_config={**result["quant_config"], "version": 2})
    assert collected["stale"][seed1].startswith("made by pact version 2; this qsal makes version")
    assert collected["rows"][2]["seeds"] == 1 and "mixed_configs" not in collected["rows"][2]
    # ... but not one recorded before an option was added (absent = the old behaviour, the option's default)
    old_fields = {k: v for k, v in result["quant_config"].items() if k not in ("weight_clip", "alpha_calibration")}
    collected = write(quant_config=old_fields)
    assert seed1 not in collected["stale"] and collected["rows"][2]["seeds"] == 2
    # ... and one from before result.json recorded its config: best.json's is read (as a rerun's redo check does)
    unrecorded = {k: v for k, v in result.items() if k != "quant_config"}
    (other / "result.json").write_text(json.dumps({**unrecorded, "seed": 1, "id": seed1}))
    assert seed1 not in collect_results(tmp_path, grids=False)["stale"]  # recorded nowhere: kept, not guessed
    (other / "best.json").write_text(json.dumps({"quant": {**result["quant_config"], "version": 2}}))
    assert seed1 in collect_results(tmp_path, grids=False)["stale"]
    (other / "best.json").unlink()
    write(quant_config={**result["quant_config"], "version": 2})
    report_run(tmp_path)
    assert f"- `{seed1}`: made by pact version 2" in (tmp_path / "report.md").read_text()
    # a folder whose config cannot be read judges nothing stale: the row says it mixes methods
    stamp.write_text(json.dumps({**recorded, "config": "unreadable"}))
    assert collect_results(tmp_path, grids=False)["rows"][2]["mixed_configs"]
    stamp.write_text(json.dumps({**recorded, "config": {**recorded["config"], "seeds": [0, 1]}}))
    with pytest.raises(QsalError, match="different config"):
        run_study(parse_run_config({**TINY, "seeds": [1]}), tmp_path, progress=False)


def test_two_local_workers(tmp_path):
    cfg = parse_run_config({**TINY, "methods": ["fp32"], "seeds": [0, 1]})
    statuses = run_study(cfg, tmp_path, workers=2, progress=False)
    assert sorted(s["status"] for s in statuses) == ["done", "done"]


def test_progress_off_a_terminal_is_one_line_per_finished_cell(tmp_path, capsys):
    """Numbered in the order cells end, each as it ends ('[2/2]' twice, at the group's end, before), and each cell's
    epochs in its log.txt (it held only start / trained / done: an hours-long cell said nothing of its progress)."""
    cfg = parse_run_config({**TINY, "methods": ["fp32", "ptq"], "epochs": {"fp32": 2},
                            "measure": {"latency": False, "saliency": False}})
    statuses = run_study(cfg, tmp_path, progress=True)  # the default of `qsal run`; stderr here is not a terminal
    assert [s["status"] for s in statuses] == ["done", "done"]
    assert capsys.readouterr().err.splitlines() == ["[1/2] done: breastmnist/small_cnn/seed0/fp32",
                                                    "[2/2] done: breastmnist/small_cnn/seed0/ptq-int8-minmax"]
    log = (tmp_path / "breastmnist/small_cnn/seed0/fp32/log.txt").read_text()
    assert "epoch 1/2  train_loss" in log and "epoch 2/2  train_loss" in log and "\r" not in log


def test_the_command_line_reproduces_a_study_cell_weight_for_weight(tmp_path):
    """A study's FP32 cell and its PACT-4 fine-tune (which inherits the train: recipe) are the same `qsal train` and
    `qsal quantize` runs, bit for bit: the keys a study sets have flags, and the command line's defaults are the API's
    (quantize used to calibrate PACT on 512 images where PACTConfig, and so every study, uses 256)."""
    from safetensors.torch import load_file

    from qsal.cli import main

    recipe = {"shift_px": 2, "hflip": True, "rotate_deg": 10.0, "zoom": 0.1, "weight_decay": 1e-4, "ema_decay": 0.9}
    cfg = parse_run_config({**TINY, "methods": ["fp32", "pact"], "train": recipe, "finetune": {"lr": 2e-4},
                            "measure": {"latency": False, "saliency": False}})
    assert [s["status"] for s in run_study(cfg, tmp_path / "study", progress=False)] == ["done", "done"]
    flags = ["--shift-px", "2", "--hflip", "--rotate-deg", "10", "--zoom", "0.1", "--ema-decay", "0.9", "--seed", "0",
             "--no-progress", "--quiet"]
    assert main(["train", "--dataset", "breastmnist", "--model", "small_cnn", "--epochs", "1", "--weight-decay",
                 "1e-4", "--out", str(tmp_path / "fp32"), *flags]) == 0
    assert main(["quantize", str(tmp_path / "fp32" / "best.safetensors"), "--method", "pact", "--bits", "4", "--epochs",
                 "1", "--lr", "2e-4", "--weight-decay", "1e-4", "--out", str(tmp_path / "pact-4"), *flags]) == 0
    cell = tmp_path / "study/breastmnist/small_cnn/seed0"
    for name in ("fp32", "pact-4"):
        ours, theirs = load_file(str(tmp_path / name / "best.safetensors")), load_file(str(cell / name / "best.safetensors"))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_ray_backend_in_local_mode(tmp_path):
    ray = pytest.importorskip("ray")
    cfg = parse_run_config({**TINY, "methods": ["fp32"], "seeds": [0]})
    try:
        statuses = run_study(cfg, tmp_path, backend="ray", workers=1, progress=False)
    finally:
        ray.shutdown()
    assert [s["status"] for s in statuses] == ["done"]
    assert (tmp_path / "breastmnist/small_cnn/seed0/fp32/result.json").is_file()


class _OnePixel(torch.nn.Module):
    """Two-class model that looks at pixel (5, 5) only: class 0 when it is bright."""

    def forward(self, x):
        z = 10.0 * (x[:, 0, 5, 5] - 0.5)
        return torch.stack([z, -z], dim=1)


def test_explanation_measures_score_the_map_by_deletion_and_insertion():
    # The map is non-zero at (5, 5) only, so deleting the first 5 % of pixels removes the evidence (p(class 0) from
    # sigmoid(10) to sigmoid(-10) on a 0 blank) and inserting them restores it: deletion AUC ~0.05, insertion ~0.95.
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 28, 28, generator=gen) * 0.4 + 0.05
    x[:, 0, 5, 5] = 1.0
    x[:, 0, 0, 0] = 0.0  # the blank (each image's minimum) is 0
    y = torch.zeros(8, dtype=torch.long)
    maps, m = explanation_measures(_OnePixel(), x, y, seed=0)
    assert m["deletion_auc"] == pytest.approx(0.5 / 20 + 19 / 20 * 4.54e-5, abs=1e-3)
    assert m["insertion_auc"] == pytest.approx(1 - 0.5 / 20, abs=1e-3)
    # Removing a fraction t of the pixels: salient-first always takes (5, 5) (accuracy 0 for t > 0), random takes it
    # with probability t; over t = 0, .1, ..., .9 the expected gap is 0.55 - 0.1 = 0.45 (8 images: 0.475 here).
    assert m["faithfulness_gap"] == pytest.approx(0.45, abs=0.1)


def test_a_parent_whose_weights_were_not_committed_is_trained_again_only_when_a_child_needs_it(tmp_path):
    cfg = parse_run_config({**TINY, "methods": ["fp32", "ptq"], "observers": ["minmax", "percentile"],
                            "measure": {"latency": False, "saliency": False}})
    run_study(cfg, tmp_path, progress=False)
    fp32 = tmp_path / "breastmnist/small_cnn/seed0/fp32"
    ptq = tmp_path / "breastmnist/small_cnn/seed0/ptq-int8-minmax"
    sibling = tmp_path / "breastmnist/small_cnn/seed0/ptq-int8-percentile"
    first = json.loads((fp32 / "result.json").read_text())["test_auc"]
    # A fresh checkout of a committed run folder: results kept, weights (*.safetensors) not, one PTQ cell unfinished.
    (fp32 / "best.safetensors").unlink()
    (ptq / "result.json").unlink()
    by_id = {s["id"].split("/")[-1]: s["status"] for s in run_study(cfg, tmp_path, progress=False)}
    # The finished sibling is redone too: it came from the old parent, and the group reports the new one.
    assert by_id == {"fp32": "done", "ptq-int8-minmax": "done", "ptq-int8-percentile": "done"}
    assert "its parent fp32 was trained again after this cell was made: redoing it" in (sibling / "log.txt").read_text()
    assert (fp32 / "best.safetensors").is_file() and "training it again" in (fp32 / "log.txt").read_text()
    assert json.loads((fp32 / "result.json").read_text())["test_auc"] == pytest.approx(first, abs=1e-6)  # same seed
    # Nothing left that needs the weights: the parent stays finished without them.
    (fp32 / "best.safetensors").unlink()
    by_id = {s["id"].split("/")[-1]: s["status"] for s in run_study(cfg, tmp_path, progress=False)}
    assert all(s.startswith("skipped") for s in by_id.values())


def test_a_cell_made_by_an_older_method_version_is_redone_and_one_that_does_not_say_is_kept(tmp_path):
    from qsal.quant import PACTConfig

    cfg = parse_run_config({**TINY, "methods": ["fp32", "pact"], "measure": {"latency": False, "saliency": False}})
    run_study(cfg, tmp_path, progress=False)
    pact = tmp_path / "breastmnist/small_cnn/seed0/pact-4"
    old = PACTConfig.version - 1
    for name, path in (("result.json", ["quant_config"]), ("best.json", ["quant"]), ("run.json", ["config", "quant"])):
        d = json.loads((pact / name).read_text())
        q = d[path[0]] if len(path) == 1 else d[path[0]][path[1]]
        assert q["version"] == PACTConfig.version
        q["version"] = old  # as the previous definition of PACT wrote it (run.json's: resuming it is refused)
        (pact / name).write_text(json.dumps(d))
    by_id = {s["id"].split("/")[-1]: s["status"] for s in run_study(cfg, tmp_path, progress=False)}
    assert by_id == {"fp32": "skipped (finished earlier)", "pact-4": "done"}
    log = (pact / "log.txt").read_text()  # kept through the redo: the history of what was done and why
    assert f"made by pact version {old}; this qsal makes version {PACTConfig.version}: redoing it" in log
    assert log.count("start breastmnist/small_cnn/seed0/pact-4") == 2
    assert json.loads((pact / "result.json").read_text())["quant_config"]["version"] == PACTConfig.version
    # A folder from before result.json recorded the config, best.json's quant naming no version: kept as it is.
    for name, key in (("result.json", "quant_config"), ("best.json", "quant")):
        d = json.loads((pact / name).read_text())
        d[key] = None if key == "quant_config" else {k: v for k, v in d[key].items() if k != "version"}
        (pact / name).write_text(json.dumps(d))
    assert [s["status"] for s in run_study(cfg, tmp_path, progress=False)] == ["skipped (finished earlier)"] * 2


def test_a_child_older_than_its_parent_is_redone_even_after_a_run_stopped_between_the_two(tmp_path):
    cfg = parse_run_config({**TINY, "methods": ["fp32", "ptq"], "measure": {"latency": False, "saliency": False}})
    run_study(cfg, tmp_path, progress=False)
    fp32 = tmp_path / "breastmnist/small_cnn/seed0/fp32"
    # As if the parent had been trained again and the run then stopped before its child was redone.
    ptq = tmp_path / "breastmnist/small_cnn/seed0/ptq-int8-minmax"
    made = json.loads((fp32 / "result.json").read_text())["made_at"]
    assert json.loads((ptq / "result.json").read_text())["parent_made_at"] == made  # which parent it came from
    result = json.loads((fp32 / "result.json").read_text())
    result["made_at"] = "1999-01-01T00:00:00+00:00"  # another parent, whatever the clocks say
    (fp32 / "result.json").write_text(json.dumps(result))
    by_id = {s["id"].split("/")[-1]: s["status"] for s in run_study(cfg, tmp_path, progress=False)}
    assert by_id == {"fp32": "skipped (finished earlier)", "ptq-int8-minmax": "done"}
    assert "was trained again after this cell was made" in (ptq / "log.txt").read_text()
    assert json.loads((ptq / "result.json").read_text())["parent_made_at"] == "1999-01-01T00:00:00+00:00"
    # Done once: the redone child names its parent, so the next run keeps it.
    assert [s["status"] for s in run_study(cfg, tmp_path, progress=False)] == ["skipped (finished earlier)"] * 2
    # A cell from before parent_made_at is compared by time: older than its parent means redone.
    result = json.loads((ptq / "result.json").read_text())
    del result["parent_made_at"]
    (ptq / "result.json").write_text(json.dumps(result))
    assert [s["status"] for s in run_study(cfg, tmp_path, progress=False)] == ["skipped (finished earlier)"] * 2


def test_a_cut_off_fine_tune_that_cannot_be_continued_is_started_over(tmp_path):
    cfg = parse_run_config({**TINY, "methods": ["fp32", "pact"], "epochs": {"fp32": 1, "finetune": 2},
                            "measure": {"latency": False, "saliency": False}})
    run_study(cfg, tmp_path, progress=False)
    pact = tmp_path / "breastmnist/small_cnn/seed0/pact-4"

    def cut_off(**config_changes):  # as if the run had stopped mid fine-tune: last.pt and run.json stay
        (pact / "result.json").unlink()
        assert (pact / "last.pt").is_file()
        run = json.loads((pact / "run.json").read_text())
        run["config"].update(config_changes)
        (pact / "run.json").write_text(json.dumps(run))

    # It began from a parent since trained again (a GPU-made SGT model retrained here): resuming it was refused
    # ("pass --force") on every rerun, and the cell stayed failed.
    cut_off(parent_sha256="0" * 64)
    by_id = {s["id"].split("/")[-1]: s["status"] for s in run_study(cfg, tmp_path, progress=False)}
    assert by_id == {"fp32": "skipped (finished earlier)", "pact-4": "done"}
    assert ("cut off earlier, and its parent checkpoint is not the model this fine-tune started from: starting it "
            "over") in (pact / "log.txt").read_text()
    parent_sha = json.loads((pact / "run.json").read_text())["config"]["parent_sha256"]
    assert parent_sha != "0" * 64 and not (pact / "error.json").exists()
    # Cut off under other settings than the study's now (a config edited, the folder reused with --force).
    lr = json.loads((pact / "run.json").read_text())["config"]["train_config"]["lr"]
    cut_off(train_config={**json.loads((pact / "run.json").read_text())["config"]["train_config"], "lr": lr * 2})
    assert [s["status"] for s in run_study(cfg, tmp_path, progress=False)] == ["skipped (finished earlier)", "done"]
    assert f"train_config.lr changed ({lr * 2!r} -> {lr!r}): starting it over" in (pact / "log.txt").read_text()


def test_a_config_edited_and_rerun_with_force_redoes_the_cells_trained_on_the_old_schedule(tmp_path):
    base = {**TINY, "methods": ["fp32", "ptq", "pact"], "measure": {"latency": False, "saliency": False}}
    run_study(parse_run_config(base), tmp_path, progress=False)
    cells = {n: tmp_path / f"breastmnist/small_cnn/seed0/{n}" for n in ("fp32", "ptq-int8-minmax", "pact-4")}

    def rerun(study):
        run_study(parse_run_config(study), tmp_path, progress=False, force=True)  # --force: the folder's config changed
        return {n: json.loads((c / "run.json").read_text())["config"] for n, c in cells.items()}

    # The fine-tune's schedule edited: only the fine-tuned cell was trained on the old one.
    before = {n: (c / "result.json").stat().st_mtime_ns for n, c in cells.items()}
    runs = rerun({**base, "finetune": {"weight_decay": 0.001}})
    assert runs["pact-4"]["train_config"]["weight_decay"] == 0.001
    assert [(c / "result.json").stat().st_mtime_ns == before[n] for n, c in cells.items()] == [True, True, False]
    assert ("trained on another schedule than this study's (train_config.weight_decay: 0.0 -> 0.001): redoing it"
            in (cells["pact-4"] / "log.txt").read_text())
    # The training schedule edited: the parent is trained again, and its children from the new parent.
    runs = rerun({**base, "finetune": {"weight_decay": 0.001}, "train": {"weight_decay": 0.001}})
    assert runs["fp32"]["weight_decay"] == 0.001 and runs["pact-4"]["train_config"]["weight_decay"] == 0.001
    assert "(weight_decay: 0.0 -> 0.001): redoing it" in (cells["fp32"] / "log.txt").read_text()
    made = json.loads((cells["fp32"] / "result.json").read_text())["environment"]["utc"]
    assert all(json.loads((cells[n] / "result.json").read_text())["parent_made_at"] == made
               for n in ("ptq-int8-minmax", "pact-4"))
    # Nothing changed since: all kept.
    statuses = run_study(parse_run_config({**base, "finetune": {"weight_decay": 0.001}, "train": {"weight_decay": 0.001}}),
                         tmp_path, progress=False)
    assert [s["status"] for s in statuses] == ["skipped (finished earlier)"] * 3


def test_a_child_whose_parent_failed_in_the_run_is_not_run_from_what_the_parent_left(tmp_path, monkeypatch):
    import qsal.pipeline

    cfg = parse_run_config({**TINY, "methods": ["fp32", "ptq"], "measure": {"latency": False, "saliency": False}})
    real = qsal.pipeline.train_model

    def fails_late(*args, **kwargs):  # best.safetensors written, then the cell fails (a late divergence, a full disk)
        real(*args, **kwargs)
        raise RuntimeError("simulated failure after the best epoch was saved")

    monkeypatch.setattr(qsal.pipeline, "train_model", fails_late)
    by_id = {s["id"].split("/")[-1]: s["status"] for s in run_study(cfg, tmp_path, progress=False)}
    assert by_id["fp32"].startswith("failed: RuntimeError: simulated failure")
    assert by_id["ptq-int8-minmax"] == "not run: its parent fp32 did not finish"
    assert (tmp_path / "breastmnist/small_cnn/seed0/fp32/best.safetensors").is_file()  # what it would have used
    assert not (tmp_path / "breastmnist/small_cnn/seed0/ptq-int8-minmax").exists()
    monkeypatch.setattr(qsal.pipeline, "train_model", real)
    assert [s["status"] for s in run_study(cfg, tmp_path, progress=False)] == ["done", "done"]


@pytest.mark.slow
def test_sigterm_to_a_parallel_run_ends_its_workers_and_a_rerun_resumes(tmp_path):
    """`kill PID` on `qsal run --workers 2` used to leave both workers training, orphaned, holding the folder's lock."""
    import os
    import sys
    import time

    from interrupt import start_until, terminate

    cfg = tmp_path / "two.yaml"
    cfg.write_text("datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\nseeds: [0, 1]\n"
                   "train: {epochs: 200}\nmeasure: {latency: false, saliency: false}\n")
    run = tmp_path / "run"
    proc = start_until([sys.executable, "-m", "qsal.cli", "run", str(cfg), "--out", str(run), "--workers", "2",
                        "--no-progress"], [run / f"breastmnist/small_cnn/seed{s}/fp32/last.pt" for s in (0, 1)])
    workers = [int(c) for c in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
    assert len(workers) >= 2
    assert terminate(proc) == "interrupted; finished files are intact and a rerun resumes"
    time.sleep(1)
    alive = [w for w in workers if os.path.exists(f"/proc/{w}") and "zombie" not in open(f"/proc/{w}/status").read()]
    assert alive == []
    from qsal.study.redo import progress
    from qsal.study.grid import plan_groups
    from qsal.study.config import load_run_config

    groups = plan_groups(load_run_config(cfg))
    assert progress(groups, run)[0] == 0  # nothing finished, both part-trained: a rerun continues them
    from qsal.study.rundir import run_holder

    assert run_holder(run) is None  # the lock went with the workers


def test_every_pact_option_a_study_may_set_is_type_checked():
    # a PACTConfig field without a check here would pass any YAML value through (fold_bn: "no" folded BatchNorm)
    import dataclasses

    from qsal.quant import PACTConfig
    from qsal.study.config import _PACT_TYPES

    assert sorted(_PACT_TYPES) == sorted(f.name for f in dataclasses.fields(PACTConfig) if f.name != "bits")
    defaults = PACTConfig()
    for name, (check, words) in _PACT_TYPES.items():  # the default passes (a tuple default as YAML gives it: a list)
        value = getattr(defaults, name)
        assert check(list(value) if isinstance(value, tuple) else value), (name, words)


def test_a_half_finished_run_says_so_where_its_report_names_the_source():
    from qsal.study.results import _cells_done

    cfg = parse_run_config({"datasets": ["breastmnist"], "models": ["small_cnn"], "methods": ["fp32", "pact"],
                            "bits": [4], "seeds": [0, 1, 2]}).to_dict()  # as run_config.json records it: 6 cells
    assert _cells_done(2, cfg) == "2 of 6 cells finished"
    assert _cells_done(6, cfg) == "6 cells"
    assert _cells_done(2, {}) == "2 cells"  # a folder without its config: the count alone
    assert _cells_done(2, {"datasets": "garbage"}) == "2 cells"


def test_measure_settings_edited_are_measured_again_from_the_same_weights_and_dropped_seeds_leave_the_report(tmp_path):
    """--force over an edited ``measure:`` measured nothing again (a row then averaged maps of 8 and 24 images, its
    latency from one seed); a seed dropped from the config stayed in every mean."""
    import numpy as np

    from qsal.run_folder import file_sha256

    base = {**TINY, "seeds": [0, 1], "measure": {"latency": False, "saliency": True, "n_explain": 4}}
    run_study(parse_run_config(base), tmp_path, progress=False)
    cells = {n: tmp_path / f"breastmnist/small_cnn/seed0/{n}" for n in ("fp32", "ptq-int8-minmax", "pact-4")}
    before = {n: json.loads((c / "result.json").read_text()) for n, c in cells.items()}
    weights = {n: file_sha256(cells[n] / "best.safetensors") for n in ("fp32", "pact-4")}
    # n_explain edited and seed 1 dropped (its cells stay on disk)
    edited = {**base, "seeds": [0], "measure": {"latency": False, "saliency": True, "n_explain": 6}}
    statuses = run_study(parse_run_config(edited), tmp_path, progress=False, force=True)
    assert [s["status"] for s in statuses] == ["done"] * 3
    for n, c in cells.items():
        r = json.loads((c / "result.json").read_text())
        assert r["measure"]["n_explain"] == 6 and np.load(c / "saliency_maps.npy").shape[0] == 6
        # the same model: its weights, its time of making (its children stay its children) and its test metrics
        assert r["made_at"] == before[n]["made_at"] and r["test_auc"] == pytest.approx(before[n]["test_auc"])
        assert "measured with other settings than this study's (n_explain: 4 -> 6): measuring it again" in (
            c / "log.txt").read_text()
    assert {n: file_sha256(cells[n] / "best.safetensors") for n in weights} == weights
    # the fine-tune's seconds over every invocation (metrics.json's, counted across resumes), not the measuring run's
    assert json.loads((cells["pact-4"] / "result.json").read_text())["train_s"] == json.loads(
        (cells["pact-4"] / "metrics.json").read_text())["train_seconds"]
    collected = collect_results(tmp_path, grids=False)
    assert {r["seeds"] for r in collected["rows"]} == {1} and len(collected["left_out"]) == 3
    assert {r["seed_ids"] for r in collected["rows"]} == {"0"}  # which seed, not only how many
    report = report_run(tmp_path)
    text = open(report["markdown"]).read()
    assert "## Cells left out" in text and "breastmnist/small_cnn/seed1/fp32" in text
    # and out of every figure: the dropped seed's saliency grid was drawn and embedded all the same
    assert "seed1/saliency_grid.png" not in text and not (tmp_path / "breastmnist/small_cnn/seed1/saliency_grid.png").exists()
    # latency: false left every cell without its model card; it only leaves the card's latency out
    card = (cells["pact-4"] / "model.card.md").read_text()
    assert "## Latency" not in card and "pact" in card.lower()


def test_sigterm_to_a_one_worker_run_ends_it_as_ctrl_c_does(tmp_path):
    """With workers 2 a `kill` printed one line and exited 130; with one worker it died silently with 143."""
    import sys

    from interrupt import start_until, terminate

    cfg = tmp_path / "one.yaml"
    cfg.write_text("datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\n"
                   "train: {epochs: 200}\nmeasure: {latency: false, saliency: false}\n")
    run = tmp_path / "run"
    proc = start_until([sys.executable, "-m", "qsal.cli", "run", str(cfg), "--out", str(run), "--no-progress"],
                       [run / "breastmnist/small_cnn/seed0/fp32/last.pt"])
    assert terminate(proc) == "interrupted; finished files are intact and a rerun resumes"


def test_a_report_of_a_run_under_way_with_nothing_finished_says_a_run_holds_it(tmp_path):
    """It said 'run `qsal run` first' while a run was working on the folder."""
    from qsal.study.results import report_run
    from qsal.study.rundir import run_lock

    cfg = parse_run_config(TINY)
    (tmp_path / "run_config.json").write_text(json.dumps({"fingerprint": cfg.fingerprint(), "config": cfg.to_dict()}))
    with pytest.raises(QsalError, match="run `qsal run` first"):
        report_run(tmp_path)
    with run_lock(tmp_path):
        with pytest.raises(QsalError, match=r"a `qsal run` \(pid \d+\) is working on it"):
            report_run(tmp_path)


def test_a_status_changed_at_the_groups_end_keeps_its_cells_number(tmp_path, capsys, monkeypatch):
    """Map agreement is checked again at a group's end and can fail a cell already shown as done: its new line
    reused the last cell's number ('[3/3]' twice)."""
    import qsal.study.runner as runner

    real = runner.agreement_with_fp32

    def agreement(specs, run_dir):
        found = real(specs, run_dir)
        return {**found, specs[1].id: "made-up agreement problem"} if len(specs) == 3 else found  # the group's end

    monkeypatch.setattr(runner, "agreement_with_fp32", agreement)
    cfg = parse_run_config({**TINY, "methods": ["fp32", "ptq"], "observers": ["minmax", "percentile"],
                            "measure": {"latency": False, "saliency": False}})
    run_study(cfg, tmp_path, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["[1/3] done: breastmnist/small_cnn/seed0/fp32",
                     "[2/3] done: breastmnist/small_cnn/seed0/ptq-int8-minmax",
                     "[3/3] done: breastmnist/small_cnn/seed0/ptq-int8-percentile",
                     "[2/3] now failed: QsalError: made-up agreement problem: breastmnist/small_cnn/seed0/ptq-int8-minmax"]
