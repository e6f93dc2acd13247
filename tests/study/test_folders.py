"""A study's own image folders (qsal.study.folders): named under `folders:`, listed in `datasets:`, run as cells named
by the short name, reported from what the cells recorded."""

import json
import shutil

import pytest
import yaml

from qsal.errors import QsalError
from qsal.study.config import load_run_config, parse_run_config

BASE = {"models": ["small_cnn"], "methods": ["fp32"], "measure": {"latency": False, "saliency": True, "n_explain": 8}}


def _problems(raw) -> str:
    with pytest.raises(QsalError) as e:
        parse_run_config({**BASE, **raw}, "s.yaml", authored=True)
    assert "Traceback" not in str(e.value)
    return str(e.value)


def test_a_folder_is_named_checked_against_its_class_folders_and_read_as_qsal_train_reads_it(breast_folder, tmp_path):
    root = breast_folder(40)
    cfg = parse_run_config({**BASE, "datasets": ["breastmnist", "clinic"],
                            "folders": {"clinic": {"path": str(root), "positive_class": "malignant", "size": 32}}},
                           "s.yaml", authored=True)
    assert cfg.dataset_source("clinic") == f"folder:{root.resolve()}"
    assert cfg.dataset_source("breastmnist") == "breastmnist"
    assert (cfg.dataset_size("clinic"), cfg.dataset_size("breastmnist")) == (32, None)
    assert (cfg.positive_class("clinic"), cfg.positive_class("breastmnist")) == ("malignant", None)
    info = cfg.dataset_info("clinic")
    assert info.labels == ("malignant", "normal, benign") and info.image_size == 32
    assert info.n_samples == {"train": 56, "val": 8, "test": 16}  # 70/10/20 of each class's 40
    assert parse_run_config(cfg.to_dict()).folders == cfg.folders  # a recorded config reads back the same
    # the fingerprint changes with the folder's settings; a study without folders keeps its old fingerprint
    swapped = {"clinic": {**cfg.folders["clinic"], "positive_class": "normal, benign"}}
    other = parse_run_config({**cfg.to_dict(), "folders": swapped})
    assert other.fingerprint() != cfg.fingerprint()
    plain = parse_run_config({**BASE, "datasets": ["breastmnist"]})
    assert plain.folders == {}
    assert plain.fingerprint() == parse_run_config({**BASE, "datasets": ["breastmnist"], "folders": {}}).fingerprint()

    msg = _problems({"datasets": ["clinic"], "folders": {"clinic": str(root)}})
    assert ("folders.clinic.positive_class: missing; clinic has two classes ('malignant', 'normal, benign'): name the "
            "one sensitivity is about") in msg
    msg = _problems({"datasets": ["clinic"], "folders": {"clinic": {"path": str(root), "positive_class": "benign"}}})
    assert ("folders.clinic.positive_class: 'benign' is not a class of clinic; choose one of 'malignant', "
            "'normal, benign'") in msg
    msg = _problems({"datasets": ["breastmnist", "gone"], "folders": {
        "gone": {"path": str(tmp_path / "nowhere"), "positive_class": "a"}, "spare": str(root)}})
    assert f"folders.gone.path: image folder {tmp_path / 'nowhere'} does not exist" in msg
    assert "folders.spare: named, but not in datasets (no cell uses it); add spare to datasets, or drop it" in msg
    msg = _problems({"datasets": ["breastmnist"], "folders": {
        "Clinic/x": str(root), "breastmnist": str(root), "z": {"path": str(root), "colour": 1},
        "s": {"path": str(root), "size": 4, "positive_class": 1}, "p": {"positive_class": "malignant"}}})
    for part in ("folders.Clinic/x: a folder's short name names its cell folders: use lower-case letters",
                 "folders.breastmnist: breastmnist is a dataset of the table (`qsal datasets`); give the folder "
                 "another name",
                 "folders.z: unknown key(s) ['colour']; known: path, positive_class, size",
                 "folders.s.size: 4 is not an image size in px (12-1024)",
                 "folders.s.positive_class: 1 is not a class name (write it as text: '1')",
                 "folders.p.path: missing; give the folder of class sub-folders"):
        assert part in msg
    listed = _problems({"datasets": ["breastmnist"], "folders": [str(root)]})
    assert "folders: must map short names to folders" in listed
    # a folder named with a problem is reported once (not again as an unknown dataset), with how to write the value
    msg = _problems({"datasets": ["clinic"], "folders": {"clinic": {"path": str(root), "size": 28.0}}})
    assert msg == "s.yaml has 1 problem(s): folders.clinic.size: 28.0 is not an image size in px (12-1024) (write 28)"
    image = next((root / "malignant").iterdir())
    msg = _problems({"datasets": ["clinic"], "folders": {"clinic": {"path": str(image)}}})
    assert f"folders.clinic.path: image folder {image} is a file, not a folder" in msg
    # a test split smaller than the explanations asked for, named by the folder's short name
    msg = _problems({"datasets": ["clinic"], "measure": {"n_explain": 64},
                     "folders": {"clinic": {"path": str(root), "positive_class": "malignant"}}})
    assert "measure.n_explain: 64 is more than the 16 test images of clinic" in msg


def test_images_too_small_for_the_folders_size_are_refused_before_any_cell_with_the_setting_to_change(breast_folder,
                                                                                                    tmp_path):
    from qsal.study.runner import run_study

    root = breast_folder(10)
    cfg = parse_run_config({**BASE, "datasets": ["clinic"], "measure": {"saliency": False},
                            "folders": {"clinic": {"path": str(root), "positive_class": "malignant", "size": 200}}})
    with pytest.raises(QsalError, match=r"is 28x28 px; resizing it to 200 px would upscale it more than 4x: remove "
                                        r"it, or use the image at a larger size, or lower folders.clinic.size in the "
                                        r"config to 112 or less$"):
        run_study(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_relative_folder_path_is_read_from_the_config_files_folder(breast_folder, tmp_path, monkeypatch):
    root = breast_folder(10)  # tmp_path/folder
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "s.yaml"
    config.write_text(yaml.safe_dump({**BASE, "datasets": ["clinic"], "measure": {"saliency": False},
                                      "folders": {"clinic": {"path": "../folder", "positive_class": "malignant"}}}))
    monkeypatch.chdir("/")  # whichever folder it is run from
    assert load_run_config(config).folders["clinic"]["path"] == str(root.resolve())


def test_a_folder_study_runs_reruns_nothing_and_is_reported_where_its_images_are_not(breast_folder, tmp_path,
                                                                                     capsys):
    from qsal.study.grid import plan_groups
    from qsal.study.redo import stale_results
    from qsal.study.results import report_run
    from qsal.study.runner import run_study

    root = breast_folder(40)
    raw = {**BASE, "name": "clinic-study", "datasets": ["clinic"], "methods": ["fp32", "ptq"], "epochs": {"fp32": 1},
           "folders": {"clinic": {"path": str(root), "positive_class": "malignant"}}}
    cfg = parse_run_config(raw, "s.yaml", authored=True)
    run = tmp_path / "run"
    run_study(cfg, run, progress=False)
    cells = ["clinic/small_cnn/seed0/fp32", "clinic/small_cnn/seed0/ptq-int8-minmax"]
    for r in (json.loads((run / c / "result.json").read_text()) for c in cells):
        assert r["data_source"] == f"folder:{root.resolve()}" and r["class_names"] == ["malignant", "normal, benign"]
        # the named class, not the alphabetical second
        assert (r["positive_class"], r["positive_label"]) == ("malignant", 0)
    recorded = json.loads((run / "clinic/small_cnn/seed0/fp32/run.json").read_text())
    assert recorded["dataset"] == f"folder:{root.resolve()}"
    assert recorded["config"]["positive_class"] == "malignant" and recorded["config"]["size"] == 28
    assert stale_results(plan_groups(cfg), run, cfg) == {}  # what it recorded is what the config makes: no redo
    # another positive class is another study: its parent is redone (its operating point is about another class)
    swapped = parse_run_config({**cfg.to_dict(), "folders": {"clinic": {**cfg.folders["clinic"],
                                                                        "positive_class": "normal, benign"}}})
    stale = stale_results(plan_groups(swapped), run, swapped)
    assert "positive_class: 'malignant' -> 'normal, benign'" in stale["clinic/small_cnn/seed0/fp32"]
    assert cells[1] in stale

    # images added after the cells were trained: each seed's split is drawn anew, so the cells are stale, and a run
    # redoes them only when told to (the child failed alone before, its parent kept as if current)
    listing = json.loads((run / cells[0] / "result.json").read_text())["data_listing"]
    added = root / "malignant" / "added.png"
    shutil.copy(next((root / "malignant").iterdir()), added)
    stale = stale_results(plan_groups(cfg), run, cfg)
    assert stale[cells[0]] == "trained on other images than its folder holds now (files added, removed or renamed since)"
    assert cells[1] in stale
    with pytest.raises(QsalError, match=r"1 finished cell in .* was trained on other images than the study's folder "
                                        r"holds now .*clinic/small_cnn/seed0/fp32\): restore the folder as it was, or "
                                        r"pass --force to train it and the cells made from it again"):
        run_study(cfg, run, progress=False)
    from qsal.cli import main

    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["run", str(config), "--out", str(run), "--dry-run", "--no-estimate"]) == 0
    out = capsys.readouterr().out
    assert ("a run would redo 2 of them:\n  (a study folder's files changed since 1 of them trained; a run there needs "
            "--force, or restore the folder as it was)\n  clinic/small_cnn/seed0/fp32: trained on other images") in out
    assert main(["run", str(config), "--out", str(run), "--dry-run", "--no-estimate", "--json"]) == 0  # for a script
    plan = json.loads(capsys.readouterr().out)
    assert plan["cells_to_run"] == 2 and plan["finished"] is False and plan["groups"] == ["clinic/small_cnn/seed0"]
    run_study(cfg, run, progress=False, force=True)
    assert json.loads((run / cells[0] / "result.json").read_text())["data_listing"] != listing
    assert stale_results(plan_groups(cfg), run, cfg) == {}

    # the same file names with other bytes: an image overwritten in place, or the path pointed at another folder
    changed = ("trained on other images than its folder holds now (images changed, or the path names another folder "
               "since)")
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    moved = parse_run_config({**cfg.to_dict(), "folders": {"clinic": {**cfg.folders["clinic"], "path": str(copy)}}})
    assert stale_results(plan_groups(moved), run, moved) == {}  # the same images under another path: current
    original = added.read_bytes()
    other = next(p.read_bytes() for p in sorted((root / "malignant").iterdir()) if p.read_bytes() != original)
    (copy / "malignant" / added.name).write_bytes(other)
    stale = stale_results(plan_groups(moved), run, moved)
    assert stale[cells[0]] == changed and cells[1] in stale
    added.write_bytes(other)  # overwritten in place
    assert stale_results(plan_groups(cfg), run, cfg)[cells[0]] == changed
    # a report of nothing current says how to get there: a plain rerun refuses a changed folder
    with pytest.raises(QsalError, match=r"is what its study config makes now .*: restore the folder as it was, or "
                                        r"rerun `qsal run --force` with that config to train them on it as it is$"):
        report_run(run)
    added.write_bytes(original)  # restored, byte for byte
    assert stale_results(plan_groups(cfg), run, cfg) == {}

    from qsal.study.report.html import _splits

    # a folder that does not come split is split by each seed: a row of several seeds says its test images differ
    rows = [{"dataset": "clinic", "data_source": f"folder:{root.resolve()}", "seeds": n} for n in (1, 3)]
    assert _splits(rows[:1]) == "a seeded 70/10/20 train/validation/test split of each class"
    assert _splits(rows) == ("a seeded 70/10/20 train/validation/test split of each class drawn anew by each seed (a "
                             "row's seeds differ in their test images too)")
    shutil.rmtree(root)  # a committed study is reported without its images
    report_run(run)
    md = (run / "report.md").read_text()
    assert f"**dataset**: clinic (image folder {root.resolve()})" in md
    assert "**classes**: 0: malignant · 1: normal, benign" in md and "**positive class**: malignant" in md
    assert f"**splits**: a split of the image folder {root.resolve()} (no longer there)" in md


def test_a_report_of_table_sets_and_a_folder_names_the_folders_path_and_each_sets_classes(breast_folder, tmp_path):
    from qsal.study.results import report_run
    from qsal.study.runner import run_study

    root = breast_folder(20)
    (root / "normal, benign").rename(root / "benign")  # classes no table holds
    cfg = parse_run_config({**BASE, "datasets": ["breastmnist", "clinic"], "epochs": {"fp32": 1},
                            "measure": {"latency": False, "saliency": False},
                            "folders": {"clinic": {"path": str(root), "positive_class": "malignant"}}},
                           "s.yaml", authored=True)
    run_study(cfg, tmp_path / "run", progress=False)
    report_run(tmp_path / "run")
    md = (tmp_path / "run" / "report.md").read_text()
    assert f"**dataset**: breastmnist, clinic (image folder {root.resolve()})" in md
    assert "**classes**: breastmnist: 0: malignant · 1: normal, benign; clinic: 0: benign · 1: malignant" in md
    assert "**positive class**: breastmnist: malignant; clinic: malignant" in md


def test_a_folders_split_seed_gives_every_seed_one_test_set(breast_folder, tmp_path):
    from qsal.study.grid import plan_groups
    from qsal.study.redo import stale_results
    from qsal.study.results import collect_results
    from qsal.study.runner import run_study

    root = breast_folder(20)
    base = {**BASE, "datasets": ["clinic"], "seeds": [0, 1], "epochs": {"fp32": 1},
            "measure": {"latency": False, "saliency": False}}
    msg = _problems({**base, "folders": {"clinic": {"path": str(root), "positive_class": "malignant",
                                                     "split_seed": -1}}})
    assert "folders.clinic.split_seed: -1 is not a seed (a whole number, 0 to 4294967295)" in msg
    cfg = parse_run_config({**base, "folders": {"clinic": {"path": str(root), "positive_class": "malignant",
                                                           "split_seed": 7}}}, "s.yaml", authored=True)
    assert (cfg.split_seed("clinic", 0), cfg.split_seed("clinic", 1)) == (7, 7)
    run = tmp_path / "run"
    run_study(cfg, run, progress=False)
    seeds = [run / f"clinic/small_cnn/seed{s}/fp32" for s in (0, 1)]
    results = [json.loads((c / "result.json").read_text()) for c in seeds]
    assert [r["split_seed"] for r in results] == [7, 7]
    assert results[0]["data_listing"] == results[1]["data_listing"]  # one split: the same files in each part
    import numpy as np

    np.testing.assert_array_equal(*(np.load(c / "test_labels.npy") for c in seeds))
    recorded = [json.loads((c / "run.json").read_text())["config"] for c in seeds]
    assert [r["split_seed"] for r in recorded] == [7, 7] and [r["seed"] for r in recorded] == [0, 1]
    assert stale_results(plan_groups(cfg), run, cfg) == {}
    from qsal.study.report.html import _splits

    assert _splits(collect_results(run, grids=False)["rows"]) == (
        "a seeded 70/10/20 train/validation/test split of each class drawn once, by split seed 7, for every seed (a "
        "row's seeds share their test images)")
    # without it each seed draws its own split: the cells are not what that config makes
    unfixed = parse_run_config({**base, "folders": {"clinic": {"path": str(root), "positive_class": "malignant"}}})
    assert stale_results(plan_groups(unfixed), run, unfixed) == {
        f"clinic/small_cnn/seed{s}/fp32": f"its split was drawn by seed 7; the study draws it by seed {s} now"
        for s in (0, 1)}
    from qsal.study.folders import cells_on_other_images

    assert cells_on_other_images(plan_groups(unfixed), run, unfixed) == []  # its folder did not change (its config did)


def test_a_split_seed_change_is_named_as_such_and_only_where_the_split_differs():
    from qsal.study.folders import other_images

    expected = {"data_split_seed": 0, "data_listing": "L0"}
    # a cell made before split_seed was recorded drew its split by its own seed
    assert other_images({"seed": 0, "data_listing": "L0"}, expected) is None
    assert other_images({"seed": 1, "data_listing": "L1"}, expected) == (
        "its split was drawn by seed 1; the study draws it by seed 0 now: redoing it")
    # a folder that comes split lists the same files whatever the seed
    assert other_images({"seed": 1, "split_seed": 1, "data_listing": "L0"}, expected) is None
    assert other_images({"seed": 1, "split_seed": 0, "data_listing": "L1"}, expected).startswith(
        "trained on other images than its folder holds now (files added, removed or renamed since)")


def test_a_cell_cut_off_before_its_folders_images_changed_starts_over_not_resumed(breast_folder, tmp_path):
    """A part-trained cell resumed after an image was overwritten trained its first epochs on the old bytes and
    recorded only the new digest, so nothing could tell its result was made from two folders."""
    from qsal.study.runner import run_study

    root = breast_folder(20)
    cfg = parse_run_config({**BASE, "datasets": ["clinic"], "epochs": {"fp32": 1},
                            "measure": {"latency": False, "saliency": False},
                            "folders": {"clinic": {"path": str(root), "positive_class": "malignant"}}},
                           "s.yaml", authored=True)
    run = tmp_path / "run"
    run_study(cfg, run, progress=False)
    cell = run / "clinic/small_cnn/seed0/fp32"
    before = json.loads((cell / "result.json").read_text())["data_content"]
    assert json.loads((cell / "config.json").read_text())["data_content"] == before
    (cell / "result.json").unlink()  # cut off: its last.pt is there, no result yet
    unchanged = (cell / "log.txt").read_text()
    run_study(cfg, run, progress=False)  # the same images: resumed (nothing left to train), not started over
    assert "starting it over" not in (cell / "log.txt").read_text()[len(unchanged):]
    (cell / "result.json").unlink()
    images = sorted((root / "malignant").iterdir())
    from qsal.study.grid import plan_groups
    from qsal.study.redo import pending, under_way

    todo = pending(plan_groups(cfg), run, cfg)
    assert under_way(todo, run, cfg) == {cell.relative_to(run).as_posix(): 1}  # --dry-run: "a run continues from there"
    images[0].write_bytes(images[1].read_bytes())  # overwritten in place: the same file names
    assert under_way(todo, run, cfg) == {}  # a run starts it over: --dry-run does not say it continues
    run_study(cfg, run, progress=False)
    log = (cell / "log.txt").read_text()
    assert "cut off earlier, and its folder's images changed since it started (their bytes: another digest): " \
           "starting it over" in log
    after = json.loads((cell / "result.json").read_text())["data_content"]
    assert after != before and json.loads((cell / "config.json").read_text())["data_content"] == after
