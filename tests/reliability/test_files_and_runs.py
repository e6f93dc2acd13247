"""Crash and concurrency behaviour: atomic checkpoint pairs, stale temp files, file modes, a full disk,
the run-folder lock, ``qsal run``'s exit code, and images decoded without silent damage."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from qsal._atomic import atomic_path, staging_dir, write_json_atomic
from qsal.checkpoint import load_checkpoint, save_checkpoint
from qsal.cli import main
from qsal.errors import QsalError
from qsal.models import create_model


def _model():
    torch.manual_seed(0)
    m = create_model("small_cnn", 2, 1)
    return m


def _meta(m):
    return {"arch": m.qsal_arch, "dataset": {"name": "breastmnist"}}


def test_checkpoint_pair_is_written_0644_and_a_half_written_pair_reads_as_absent(tmp_path, monkeypatch):
    old_umask = os.umask(0o022)
    try:
        m = _model()
        path = save_checkpoint(m, tmp_path / "best.safetensors", _meta(m))
    finally:
        os.umask(old_umask)
    for f in ("best.safetensors", "best.json"):
        assert (tmp_path / f).stat().st_mode & 0o777 == 0o644, f  # safetensors' own writer makes 0600
    load_checkpoint(path)

    # a kill after the weights moved in and before the json did: simulated by failing the json's os.replace
    real_replace = os.replace

    def dies_before_json(src, dst):
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dies_before_json)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(m, path, _meta(m))
    monkeypatch.setattr(os, "replace", real_replace)
    assert path.is_file() and not path.with_suffix(".json").exists()
    with pytest.raises(QsalError, match="has no best.json beside it"):
        load_checkpoint(path)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    save_checkpoint(m, path, _meta(m))  # the next write completes the pair
    load_checkpoint(path)


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    dead = tmp_path / ".last.pt.pid999999999.abcd1234.tmp"  # no such pid
    dead.write_bytes(b"x" * 1000)
    legacy = tmp_path / ".last.pt.k2j3h4g5.tmp"  # older qsal: no pid in the name, an hour old
    legacy.write_bytes(b"x")
    os.utime(legacy, (0, 0))
    live = tmp_path / f".last.pt.pid{os.getpid()}.zzzz.tmp"  # a writer that is still running
    live.write_bytes(b"x")
    other = tmp_path / ".best.json.pid999999999.q.tmp"  # another destination's: not ours to judge now
    other.write_bytes(b"x")
    with atomic_path(tmp_path / "last.pt") as tmp:
        tmp.write_bytes(b"new")
    assert (tmp_path / "last.pt").read_bytes() == b"new"
    assert not dead.exists() and not legacy.exists()
    assert live.exists() and other.exists()


def test_a_failed_re_export_leaves_the_earlier_file_and_card_as_they_were(good_run, tmp_path, capsys):
    """export --force builds the file and its card in a staging folder: a card that cannot be written (here a
    corrupt metrics.json) leaves the earlier export, not a file without its card, nor nothing at all."""
    from qsal.runtime import read_metadata

    run = tmp_path / "run"
    shutil.copytree(good_run, run)
    assert main(["export", str(run / "best.json"), "--out", str(run / "m.onnx")]) == 0  # the .json names the weights
    assert main(["quantize", str(run / "best.json"), "--method", "ptq", "--out", str(tmp_path / "q")]) == 0
    quantized = json.loads((tmp_path / "q" / "best.json").read_text())
    assert quantized["parent_checkpoint"].endswith("best.safetensors")
    assert quantized["parent_sha256"] == read_metadata(run / "m.onnx")["checkpoint_sha256"]
    before = {p.name: p.read_bytes() for p in run.glob("m.*")}
    assert sorted(before) == ["m.card.json", "m.card.md", "m.onnx"]
    assert read_metadata(run / "m.onnx")["checkpoint_sha256"] == hashlib.sha256(
        (run / "best.safetensors").read_bytes()).hexdigest()
    (run / "metrics.json").write_text('{"test": ')
    capsys.readouterr()
    assert main(["export", str(run / "best.safetensors"), "--out", str(run / "m.onnx"), "--force"]) == 2
    assert "metrics.json is not valid JSON" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in run.glob("m.*")} == before
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    stale = tmp_path / ".model.onnx.pid999999999.abcd.tmp"  # a killed export's staging folder
    (stale / "sub").mkdir(parents=True)
    with staging_dir(tmp_path / "model.onnx") as stage:
        assert stage.is_dir() and not stale.exists()
    assert not stage.exists()


def test_a_full_disk_is_a_clean_error_and_keeps_the_old_file(tmp_path, monkeypatch, capsys):
    write_json_atomic(tmp_path / "r.json", {"v": 1})
    real_open = open

    def full_disk_open(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        if "w" in mode and str(file).endswith(".tmp"):
            f.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return f

    import builtins

    monkeypatch.setattr(builtins, "open", full_disk_open)
    with pytest.raises(QsalError, match="no space left on the device while writing .*r.json"):
        write_json_atomic(tmp_path / "r.json", {"v": 2})
    monkeypatch.setattr(builtins, "open", real_open)
    assert json.loads((tmp_path / "r.json").read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]

    # and an ENOSPC from anywhere else (a library writing directly) is one line, exit 2, at the CLI
    import qsal.pipeline

    def export_fills_disk(*a, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/full/model.onnx")

    monkeypatch.setattr(qsal.pipeline, "export_checkpoint", export_fills_disk)
    capsys.readouterr()
    assert main(["export", "x.safetensors"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no space left on the device (/full/model.onnx)")


def test_out_refuses_a_pipe_even_with_force_and_replaces_a_link_not_its_target(good_run, good_onnx, tmp_path, capsys):
    """--out --force moved a new file onto whatever was there: a named pipe's reader got nothing and the pipe was
    gone, and run as root --out /dev/full replaced the device. A link is replaced, its target kept: written through,
    an .onnx-named link to the checkpoint would overwrite the checkpoint being exported."""
    from PIL import Image

    from qsal.data import load_split

    Image.fromarray(load_split("breastmnist", "test").images[0, :, :, 0]).save(tmp_path / "scan.png")
    pipe = tmp_path / "pipe.csv"
    os.mkfifo(pipe)
    assert main(["predict", str(good_onnx), str(tmp_path / "scan.png"), "--out", str(pipe), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{pipe} is a pipe, not a file" in err and "name a regular file" in err
    assert pipe.is_fifo()
    link = tmp_path / "to_pipe.csv"  # as /dev/stdout is a link to the process's pipe or terminal
    link.symlink_to(pipe.name)
    with pytest.raises(QsalError, match="to_pipe.csv is a pipe, not a file"):
        write_json_atomic(link, {"a": 1})
    # a link to the checkpoint, named as the export's --out: the checkpoint is not what gets written
    weights = tmp_path / "weights.safetensors"
    shutil.copy(good_run / "best.safetensors", weights)
    shutil.copy(good_run / "best.json", tmp_path / "weights.json")
    before = weights.read_bytes()
    (tmp_path / "m.onnx").symlink_to(weights.name)
    assert main(["export", str(weights), "--out", str(tmp_path / "m.onnx"), "--force", "-q"]) == 0
    assert weights.read_bytes() == before and not (tmp_path / "m.onnx").is_symlink()
    assert (tmp_path / "m.onnx").read_bytes()[:2] != before[:2] and pipe.is_fifo()


def test_a_second_run_on_a_locked_folder_refuses(tmp_path, capsys):
    from qsal.study.rundir import run_lock

    cfg = tmp_path / "s.yaml"
    cfg.write_text("datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32]\nepochs: {fp32: 1}\n")
    run = tmp_path / "run"
    with run_lock(run):  # as if another `qsal run` were working in it
        capsys.readouterr()
        assert main(["run", str(cfg), "--out", str(run), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"{run} is in use by another `qsal run` (pid {os.getpid()})" in err and err.count("\n") == 1
    assert not (run / "run_config.json").exists()  # it refused before touching anything
    with run_lock(run):  # released: it can be taken again
        pass
    # The run named in the lock was killed (SIGKILL) and its workers, which inherited the lock, hold it still.
    import subprocess

    ended = subprocess.Popen(["true"])
    ended.wait()
    with run_lock(run):
        (run / ".qsal-run.lock").write_text(f"{ended.pid}\n")
        capsys.readouterr()
        assert main(["run", str(cfg), "--out", str(run), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert (f"(pid {ended.pid}, which has ended; the worker processes it started still hold the folder: wait for "
                "them, or end them (`fuser -v .qsal-run.lock` in the folder lists them))") in err and err.count("\n") == 1


def test_run_without_its_data_is_refused_before_any_cell(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QSAL_DATA_DIR", str(tmp_path / "no_data_here"))
    (tmp_path / "no_data_here").mkdir()  # there, without the file (a folder that is not there: test_registry)
    cfg = tmp_path / "s.yaml"
    cfg.write_text("datasets: [pneumoniamnist]\nmodels: [small_cnn]\nmethods: [fp32, ptq]\nepochs: {fp32: 1}\n")
    capsys.readouterr()
    assert main(["run", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: pneumoniamnist.npz not found (looked in")
    assert not (tmp_path / "run").exists()


def test_run_exits_nonzero_and_prints_each_failure_in_full(tmp_path, capsys, monkeypatch):
    import qsal.pipeline

    why = ("the images could not be read (a message longer than a table column would show: " + "x" * 80 +
           "); point --data-dir / QSAL_DATA_DIR at its folder")

    def unreadable(*args, **kwargs):  # data that passes the study's check and then fails in every cell
        raise QsalError(why)

    monkeypatch.setattr(qsal.pipeline, "load_splits", unreadable)
    cfg = tmp_path / "s.yaml"
    cfg.write_text("datasets: [breastmnist]\nmodels: [small_cnn]\nmethods: [fp32, ptq]\nepochs: {fp32: 1}\n")
    capsys.readouterr()
    rc = main(["run", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 1
    lines = [ln for ln in out.splitlines() if "failed:" in ln]  # the status table, one row per cell
    assert len(lines) == 1 and f"failed: QsalError: {why}" in lines[0]  # not cut short
    assert "not run: its parent fp32 did not finish" in out  # the PTQ cell has nothing to start from
    assert "has no finished cells yet" not in out + err and "none of the cells" not in out + err
    assert "error: 1 of 2 cells failed and 1 more were not run (their parent failed)" in err and "Traceback" not in err
    with pytest.raises(QsalError, match="none of the cells in .* finished: 1 failed"):
        from qsal.study.results import collect_results

        collect_results(tmp_path / "run")


def test_single_class_training_split_is_refused():
    from qsal.data import get_info
    from qsal.data.arrays import ImageSplit
    from qsal.data.checks import require_training_classes

    info = get_info("breastmnist")
    images = np.zeros((12, 28, 28, 1), np.uint8)
    with pytest.raises(QsalError, match=f"has a single class \\('{info.labels[1]}', 12 images\\)"):
        require_training_classes(ImageSplit(info, "train", images, np.ones(12, np.int64), "test"))
    require_training_classes(ImageSplit(info, "train", images, np.arange(12, dtype=np.int64) % 2, "test"))


def _png16(path: Path, px: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(px.astype(np.uint16)).save(path)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    from qsal.data.folder import read_image

    ramp = np.tile(np.linspace(0, 65535, 64), (64, 1))
    _png16(tmp_path / "ramp.png", ramp)
    img = read_image(tmp_path / "ramp.png", 1, 64)
    assert img.min() == 0 and img.max() == 255
    assert len(np.unique(img)) == 64  # every level kept (clipping left 2)
    np.testing.assert_allclose(img[0], np.round(np.linspace(0, 255, 64)), atol=1)


def test_a_12_bit_scan_in_a_16_bit_png_that_says_so_is_scaled_to_its_own_white(tmp_path):
    """A 12-bit X-ray (0-4095) in a 16-bit PNG read at most 16 of 255 (scaled by 255/65535): nearly black. The PNG's
    sBIT chunk declares 12 significant bits; Pillow ignores it, qsal reads it."""
    import struct
    import zlib

    from qsal.data.folder import png_significant_bits, read_image

    ramp = np.tile(np.linspace(0, 4095, 64), (64, 1))
    _png16(tmp_path / "plain.png", ramp)
    raw = (tmp_path / "plain.png").read_bytes()
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length+type, its 13 bytes, CRC
    sbit = struct.pack(">I4sB", 1, b"sBIT", 12) + struct.pack(">I", zlib.crc32(b"sBIT" + bytes([12])))
    (tmp_path / "xray.png").write_bytes(raw[:ihdr_end] + sbit + raw[ihdr_end:])
    assert png_significant_bits(tmp_path / "xray.png") == 12 and png_significant_bits(tmp_path / "plain.png") is None
    img = read_image(tmp_path / "xray.png", 1, 64)
    assert img.min() == 0 and img.max() == 255
    np.testing.assert_allclose(img[0], np.round(np.linspace(0, 255, 64)), atol=1)
    assert read_image(tmp_path / "plain.png", 1, 64).max() == 16  # without the declaration: the 16-bit rule, as before


def test_dicom_is_min_max_scaled(tmp_path):
    pytest.importorskip("pydicom")
    from qsal.data.folder import read_image
    from reliability_inputs import write_dicom

    img = read_image(write_dicom(tmp_path / "x.dcm", size=32), 1, 32)
    assert img.dtype == np.uint8 and img.min() == 0 and img.max() == 255 and len(np.unique(img)) > 200


def test_a_monochrome1_dicom_reads_as_displayed_and_a_blank_one_is_refused(tmp_path):
    # MONOCHROME1 (CR/DX radiographs) shows its lowest value white: read as stored, a model saw the negative image
    pytest.importorskip("pydicom")
    from qsal.data.folder import read_image
    from reliability_inputs import write_dicom

    mono2 = read_image(write_dicom(tmp_path / "m2.dcm", size=32), 1, 32).astype(int)
    mono1 = read_image(write_dicom(tmp_path / "m1.dcm", size=32, photometric="MONOCHROME1"), 1, 32).astype(int)
    np.testing.assert_array_equal(mono1, 255 - mono2)
    with pytest.raises(QsalError, match="holds one value \\(1000\\) in every pixel, a blank frame; remove it"):
        read_image(write_dicom(tmp_path / "blank.dcm", size=32, constant=True), 1, 32)


def test_a_colour_dicom_stays_in_colour_and_a_negative_slope_inverts(tmp_path):
    """Colour DICOMs (fundus, dermoscopy photographs) were averaged to gray, so a folder of them trained a grayscale
    model; a negative rescale slope (the display inverted) was ignored."""
    pytest.importorskip("pydicom")
    from qsal.data.folder import folder_channels, read_image
    from reliability_inputs import write_dicom

    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    np.testing.assert_array_equal(read_image(write_dicom(tmp_path / "c.dcm", rgb=picture), 3, 32), picture)
    for cls in ("a", "b"):
        (tmp_path / "fundus" / cls).mkdir(parents=True)
        write_dicom(tmp_path / "fundus" / cls / "x.dcm", rgb=rng.integers(0, 256, (32, 32, 3)).astype(np.uint8))
        (tmp_path / "xray" / cls).mkdir(parents=True)
        write_dicom(tmp_path / "xray" / cls / "x.dcm")
    assert folder_channels(tmp_path / "fundus") == 3 and folder_channels(tmp_path / "xray") == 1
    plain = read_image(write_dicom(tmp_path / "p.dcm"), 1, 32).astype(int)
    np.testing.assert_array_equal(read_image(write_dicom(tmp_path / "n.dcm", slope=-1.0), 1, 32), 255 - plain)
    np.testing.assert_array_equal(read_image(write_dicom(tmp_path / "s.dcm", slope=2.5), 1, 32), plain)


def test_a_dicom_named_without_a_suffix_is_found_and_read(tmp_path):
    # PACS exports name images IM0001: a folder of them was empty to qsal, and one named directly was not a picture
    pytest.importorskip("pydicom")
    from qsal.data.folder import read_image
    from qsal.predict import image_files
    from reliability_inputs import write_dicom

    named = write_dicom(tmp_path / "x.dcm", size=32)
    bare, by_uid = tmp_path / "IM0001", tmp_path / "1.2.840.113619.2.55.3.6"  # a UID's last part reads as a suffix
    bare.write_bytes(named.read_bytes())
    by_uid.write_bytes(named.read_bytes())
    (tmp_path / "README").write_text("not an image, no suffix either")
    (tmp_path / "notes.txt").write_text("nor this")
    assert image_files([tmp_path]) == [by_uid, bare, named]
    for path in (bare, by_uid):
        np.testing.assert_array_equal(read_image(path, 1, 28), read_image(named, 1, 28))


def test_names_that_are_not_utf8_load_export_and_bench(good_run, tmp_path):
    """A folder or file named with bytes from another system (not UTF-8): the Rust/C++ loaders refuse such paths,
    which read as 'truncated or corrupt'; qsal hands them the bytes, and writes the names escaped in its cards."""
    from qsal.export.bench import bench_onnx
    from qsal.pipeline import export_checkpoint
    from qsal.runtime import Runtime

    folder = Path(os.fsdecode(bytes(tmp_path) + b"/scans\xff"))
    shutil.copytree(good_run, folder)
    load_checkpoint(folder / "best.safetensors")
    onnx_path = Path(export_checkpoint(str(folder / "best.safetensors"), folder / os.fsdecode(b"m\xff.onnx"))["onnx"])
    assert Runtime(onnx_path).n_outputs == 2
    assert bench_onnx(onnx_path, threads=(1,), batches=(1,), seconds=0.05)["runs"][0]["batch"] == 1
    assert "| file | m\\xff.onnx," in onnx_path.with_suffix(".card.md").read_text(encoding="utf-8")


def test_kill_ends_qsal_train_as_ctrl_c_does_saying_how_to_continue(tmp_path):
    """`kill PID` on `qsal train` exited 143 with no word (Ctrl-C said what was left and to rerun with --resume)."""
    import sys

    from interrupt import start_until, terminate

    out = tmp_path / "run"
    proc = start_until([sys.executable, "-m", "qsal", "train", "--dataset", "breastmnist", "--model", "small_cnn",
                        "--epochs", "200", "--out", str(out), "--no-progress"], [out / "last.pt"])
    assert terminate(proc) == ("interrupted; finished files are intact: rerun the same command with --resume to "
                               "continue (--force starts over)")
