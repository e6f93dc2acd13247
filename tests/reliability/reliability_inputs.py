"""Bad inputs, made here: broken checkpoints, ONNX files, images, YAML, run folders, resume states; and the checks
every refusal must pass (one ``error:`` line, exit 2, no traceback, no new file)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from qsal.cli import main

ALIAS_BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
datasets: *f
models: *f
methods: *f
"""


def checkpoint_variant(good: Path, dest: Path, kind: str) -> Path:
    """A copy of the good checkpoint broken in one way; returns the path a user would pass."""
    dest.mkdir(parents=True, exist_ok=True)
    meta = json.loads((good / "best.json").read_text())
    shutil.copy(good / "best.safetensors", dest / "best.safetensors")
    text = None
    if kind == "arch_is_a_string":
        meta["arch"] = "small_cnn"
    elif kind == "num_classes_missing":
        del meta["arch"]["num_classes"]
    elif kind == "num_classes_is_a_string":
        meta["arch"]["num_classes"] = "2"
    elif kind == "image_size_huge":
        meta["arch"]["image_size"] = 100000
    elif kind == "list_at_top_level":
        text = json.dumps([meta])
    elif kind == "invalid_json":
        text = json.dumps(meta)[:40]
    elif kind == "quant_garbage":
        meta["quant"] = {"method": "ptq", "bogus_field": 1}
    elif kind == "dataset_with_other_channels":  # a grey model relabelled as trained on an RGB set
        meta["dataset"] = {**meta["dataset"], "name": "cifar10"}
    elif kind == "n_channels_contradicts_arch":
        meta["dataset"]["n_channels"] = 3
    elif kind == "task_unknown":
        meta["dataset"]["task"] = "segmentation"
    elif kind == "rule_unknown":
        meta["decision"]["operating_point"]["rule"] = "nonsense"
    elif kind == "positive_class_contradicts_label":  # the name says malignant, the id benign
        meta["decision"]["positive_label"] = 1 - meta["decision"]["positive_label"]
    elif kind == "data_is_a_list":
        meta["data"] = ["breastmnist"]
    elif kind == "dataset_name_is_a_number":
        meta["dataset"]["name"] = 7
    elif kind == "no_dataset":
        meta.pop("dataset", None)
        meta.pop("data", None)
    elif kind == "threshold_is_a_string":
        meta["decision"]["operating_point"]["threshold"] = "x"
    elif kind == "temperature_zero":
        meta["decision"]["temperature"] = 0
    elif kind == "positive_label_out_of_range":
        meta["decision"]["positive_label"] = 7
    elif kind == "positive_label_null":  # a threshold with no class to apply it to
        meta["decision"]["positive_label"] = None
    elif kind == "labels_not_a_list":
        meta["dataset"]["labels"] = "ab"
    elif kind == "labels_wrong_count":
        meta["dataset"]["labels"] = ["a", "b", "c"]
    elif kind == "nan_weights":
        from safetensors.torch import load_file, save_file

        state = load_file(str(good / "best.safetensors"))
        name = next(k for k, v in state.items() if v.is_floating_point())
        state[name][0] = float("nan")
        save_file(state, str(dest / "best.safetensors"))
    elif kind == "json_missing":
        return dest / "best.safetensors"
    elif kind == "pickle":
        import pickle

        (dest / "best.pt").write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
        return dest / "best.pt"
    elif kind == "truncated_weights":
        data = (good / "best.safetensors").read_bytes()
        (dest / "best.safetensors").write_bytes(data[: len(data) // 2])
    else:
        raise ValueError(kind)
    (dest / "best.json").write_text(text if text is not None else json.dumps(meta))
    return dest / "best.safetensors"


def onnx_variant(good: Path, dest: Path, kind: str) -> Path:
    import onnx

    if kind == "empty":
        dest.write_bytes(b"")
        return dest
    if kind == "garbage":
        dest.write_bytes(b"this is not a protobuf \x00\x01\x02" * 10)
        return dest
    model = onnx.load(str(good))
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props["qsal"])
    if kind == "metadata_not_json":
        props["qsal"] = "{" + props["qsal"][:30]
    elif kind == "no_input_shape":
        del meta["input_shape"]
    elif kind == "std_zero":
        meta["data"]["std"] = [0.0]
    elif kind == "no_data_name":
        del meta["data"]["name"]
    elif kind == "not_from_qsal":
        del props["qsal"]
    elif kind == "threshold_is_a_string":
        meta["decision"]["operating_point"]["threshold"] = "x"
    elif kind == "temperature_is_a_string":
        meta["decision"]["temperature"] = "hot"
    elif kind == "positive_label_out_of_range":
        meta["decision"]["positive_label"] = 7
    elif kind == "positive_label_null":  # a threshold with no class to apply it to
        meta["decision"]["positive_label"] = None
    elif kind == "labels_wrong_count":
        meta["data"]["labels"] = ["a", "b", "c"]
    elif kind == "image_size_is_a_string":
        meta["data"]["image_size"] = "big"
    elif kind == "input_shape_not_the_graphs":  # metadata edited to 3 channels; the graph still takes 1
        meta["input_shape"] = [3, 28, 28]
        meta["data"]["n_channels"] = 3
    else:
        raise ValueError(kind)
    if kind not in ("metadata_not_json", "not_from_qsal"):
        props["qsal"] = json.dumps(meta)
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(dest))
    return dest


def write_dicom(path: Path, frames: int = 1, pixels: bool = True, size: int = 32,
                photometric: str = "MONOCHROME2", constant: bool = False, slope: float | None = None,
                rgb: np.ndarray | None = None) -> Path:
    """A 12-bit secondary-capture DICOM with a gradient (or no PixelData / several frames / one value everywhere);
    ``photometric="MONOCHROME1"`` stores the same values meaning the inverse image (lowest shown white); ``slope``: a
    rescale slope (intercept 0); ``rgb``: an 8-bit ``(size, size, 3)`` colour picture instead."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, 0
    if rgb is not None:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = np.ascontiguousarray(rgb, np.uint8).tobytes()
    elif pixels:
        ramp = np.full(frames * size * size, 1000, np.uint16) if constant else \
            np.linspace(0, 4095, frames * size * size).astype(np.uint16)
        ds.PixelData = ramp.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def image_folder(root: Path, per_class: int = 10, size: int = 28) -> Path:
    """Two class folders of 8-bit PNGs (class b brighter)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cid, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            px = rng.integers(0, 100, (size, size)) + 100 * cid
            Image.fromarray(px.astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def bad_image(folder: Path, kind: str) -> Path:
    """Plant one bad file in class ``a`` of an image folder."""
    from PIL import Image

    target = folder / "a"
    if kind == "garbage_png":
        (target / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    elif kind == "one_pixel_png":
        Image.fromarray(np.full((1, 1), 128, np.uint8)).save(target / "bad.png")
    elif kind == "small_png":  # 6 px: 28 would upscale it 4.7x; 24 px is the most it allows
        Image.fromarray(np.full((6, 9), 128, np.uint8)).save(target / "bad.png")
    elif kind == "float_tiff":
        Image.fromarray(np.ones((28, 28), np.float32)).save(target / "bad.tif")
    elif kind == "garbage_dicom":
        (target / "bad.dcm").write_bytes(b"DICM" * 10 + bytes(range(256)))
    elif kind == "truncated_dicom":
        full = write_dicom(target / "full.dcm").read_bytes()
        (target / "full.dcm").unlink()
        (target / "bad.dcm").write_bytes(full[: len(full) - 1500])
    elif kind == "dicom_without_pixels":
        write_dicom(target / "bad.dcm", pixels=False)
    elif kind == "multiframe_dicom":
        write_dicom(target / "bad.dcm", frames=3)
    elif kind == "multipage_tiff":  # classified on its first page, silently, before
        pages = [Image.fromarray(np.full((28, 28), v, np.uint8)) for v in (0, 128, 255)]
        pages[0].save(target / "bad.tif", save_all=True, append_images=pages[1:])
    elif kind == "decompression_bomb":  # with Pillow's limit lowered by the test to 1000 pixels
        Image.fromarray(np.zeros((60, 60), np.uint8)).save(target / "bad.png")
    else:
        raise ValueError(kind)
    return folder


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".qsal-run.lock"}


def assert_clean_refusal(rc, out, err, expected: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in out + err, err
    assert rc == 2, f"exit {rc}; stderr: {err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert expected in lines[0], lines[0]
    assert len(lines[0]) < 1500, f"{len(lines[0])}-character message"
