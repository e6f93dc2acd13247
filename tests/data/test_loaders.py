import gzip
import hashlib
import http.server
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from qsal.data import load_split
from qsal.data.download import download_file
from qsal.data.mnist import read_idx
from qsal.data.transforms import random_rotate_zoom, random_shift, rotate_zoom
from qsal.errors import QsalError


def test_embedded_breastmnist_loads_offline(tmp_path):
    train = load_split("breastmnist", "train", tmp_path)  # empty root: falls back to the embedded copy
    assert train.source == "embedded"
    assert train.images.shape == (546, 28, 28, 1) and train.labels.shape == (546,)
    assert np.bincount(train.labels).tolist() == [147, 399]
    x, y = train.tensors()
    assert x.shape == (546, 1, 28, 28) and x.dtype == torch.float32
    assert -1.0001 <= float(x.min()) and float(x.max()) <= 1.0001


def test_shared_medmnist_sets_match_official_counts(shared_data):
    for name, counts in {"pneumoniamnist": (4708, 524, 624), "retinamnist": (1080, 120, 400)}.items():
        sizes = tuple(len(load_split(name, s, shared_data)) for s in ("train", "val", "test"))
        assert sizes == counts
    assert load_split("retinamnist", "test", shared_data).images.shape[-1] == 3


def test_truncated_or_modified_npz_is_refused(tmp_path):
    src = Path(__file__).resolve().parents[2] / "src/qsal/data/_embedded/breastmnist.npz"
    bad = tmp_path / "breastmnist.npz"
    bad.write_bytes(src.read_bytes()[:-1000])
    with pytest.raises(QsalError, match="MD5 .* expected the official"):
        load_split("breastmnist", "train", tmp_path)
    with pytest.raises(QsalError, match="not a readable npz"):
        load_split("breastmnist", "train", tmp_path, verify=False)


def test_missing_file_says_where_it_looked(tmp_path):
    with pytest.raises(QsalError, match=r"pneumoniamnist.npz not found \(looked in .*--download"):
        load_split("pneumoniamnist", "train", tmp_path)


def test_bad_labels_and_dtype_are_named(tmp_path):
    images = np.zeros((4, 28, 28), np.uint8)
    np.savez(tmp_path / "breastmnist.npz", train_images=images, train_labels=np.array([[0], [1], [2], [0]]),
             val_images=images.astype(np.float32), val_labels=np.zeros((4, 1)))
    with pytest.raises(QsalError, match="labels span 0..2 but breastmnist has classes 0..1"):
        load_split("breastmnist", "train", tmp_path, verify=False)
    with pytest.raises(QsalError, match="dtype float32, expected uint8"):
        load_split("breastmnist", "val", tmp_path, verify=False)


def _write_idx(path: Path, arr: np.ndarray, magic: int) -> None:
    header = struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in arr.shape)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def test_idx_parser_checks_magic_and_length(tmp_path):
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    _write_idx(tmp_path / "x.gz", arr, 2051)
    out, _ = read_idx(tmp_path / "x.gz")
    np.testing.assert_array_equal(out, arr)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(struct.pack(">iiii", 1234, 1, 28, 28) + bytes(784)))
    with pytest.raises(QsalError, match="magic number 1234"):
        read_idx(tmp_path / "bad.gz")
    (tmp_path / "short.gz").write_bytes(gzip.compress(struct.pack(">iiii", 2051, 5, 28, 28) + bytes(784)))
    with pytest.raises(QsalError, match="truncated"):
        read_idx(tmp_path / "short.gz")


def test_official_mnist_test_split(shared_data):
    test = load_split("mnist", "test", shared_data)
    assert len(test) == 10000 and np.bincount(test.labels)[0] == 980
    val = load_split("mnist", "val", shared_data)
    assert len(val) == 6000  # 10 % of the official training set, seeded


def test_cifar10_binary_layout(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for name, n in [(f"data_batch_{i}.bin", 3) for i in range(1, 6)] + [("test_batch.bin", 4)]:
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        (folder / name).write_bytes(np.concatenate([labels[:, None], pixels], axis=1).tobytes())
    test = load_split("cifar10", "test", tmp_path)
    assert test.images.shape == (4, 32, 32, 3)
    red_plane = np.fromfile(folder / "test_batch.bin", np.uint8).reshape(4, 3073)[0, 1:1025].reshape(32, 32)
    np.testing.assert_array_equal(test.images[0, :, :, 0], red_plane)
    assert len(load_split("cifar10", "train", tmp_path)) + len(load_split("cifar10", "val", tmp_path)) == 15


def test_image_folder_split_is_stratified_and_seeded(tmp_path):
    from PIL import Image

    for cls in ("benign", "malignant"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray((np.full((40, 40), 20 * i) + np.arange(40)).astype(np.uint8)).save(tmp_path / cls / f"{i}.png")
    splits = {s: load_split(f"folder:{tmp_path}", s, size=28) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [14, 2, 4]
    assert splits["test"].info.labels == ("benign", "malignant")
    assert np.bincount(splits["test"].labels).tolist() == [2, 2]
    assert splits["train"].images.shape[1:] == (28, 28, 1)


def test_a_folder_that_comes_split_keeps_its_split(tmp_path):
    """train/ val/ test/ each with class folders (Kaggle's chest X-rays) was read as a 3-class set, the classes
    'test', 'train' and 'val', without a word."""
    from PIL import Image

    from qsal.data.folder import describe_split, folder_split_files

    def fill(folder, n):
        folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray((np.full((40, 40), 9 * i) + np.arange(40)).astype(np.uint8)).save(folder / f"{i}.png")

    for split, n in (("train", 20), ("Test", 5)):  # no validation folder: 10 % of each training class held out
        for cls in ("NORMAL", "PNEUMONIA"):
            fill(tmp_path / "kaggle" / split / cls, n)
    root = tmp_path / "kaggle"
    splits = {s: load_split(f"folder:{root}", s, size=28) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [36, 4, 10]
    assert splits["train"].info.labels == ("NORMAL", "PNEUMONIA")
    files = folder_split_files(root, seed=3)
    assert all(f.startswith("Test/") for f, _ in files["test"]) and all(f.startswith("train/") for f, _ in files["val"])
    assert not {f for f, _ in files["val"]} & {f for f, _ in files["train"]}
    assert folder_split_files(root, seed=3) == files != folder_split_files(root, seed=4)  # the held-out slice: seeded
    assert "train/ for training, a seeded 10 % of each class of train/ for validation, Test/ for test" in describe_split(root)
    for cls in ("NORMAL", "PNEUMONIA"):
        fill(root / "val" / cls, 2)
    assert [len(load_split(f"folder:{root}", s, size=28)) for s in ("train", "val", "test")] == [40, 4, 10]
    fill(root / "val" / "COVID", 2)
    with pytest.raises(QsalError, match="has class folder.*COVID.*lacks"):
        load_split(f"folder:{root}", "train", size=28)
    for cls in ("a", "b"):
        fill(tmp_path / "half" / "train" / cls, 4)
        fill(tmp_path / "half" / "val" / cls, 4)
    with pytest.raises(QsalError, match="holds split folders .* but not both train and test"):
        load_split(f"folder:{tmp_path / 'half'}", "train", size=28)
    # found in review: a class with no test/ folder scored NaN without a word; train/ test/ extra/ became 3 classes
    fill(tmp_path / "half" / "test" / "a", 2)
    with pytest.raises(QsalError, match="has no folder for class\\(es\\) \\['b'\\]"):
        load_split(f"folder:{tmp_path / 'half'}", "train", size=28)
    fill(tmp_path / "half" / "test" / "b", 2)
    (tmp_path / "half" / "extra").mkdir()
    with pytest.raises(QsalError, match="holds split folders and others \\(extra, test, train, val\\)"):
        load_split(f"folder:{tmp_path / 'half'}", "train", size=28)


def test_a_folder_of_colour_photographs_keeps_its_colour_and_a_grey_one_saved_as_rgb_stays_grey(tmp_path):
    """Folder datasets were always read as grayscale: dermoscopy or fundus colour was dropped without a word."""
    from PIL import Image

    from qsal.pipeline import dataset_info

    rng = np.random.default_rng(0)
    for kind, colour in (("colour", True), ("grey", False)):
        for cls in ("a", "b"):
            (tmp_path / kind / cls).mkdir(parents=True)
            for i in range(5):
                px = rng.integers(0, 255, (32, 32, 3 if colour else 1)).astype(np.uint8)
                Image.fromarray(px if colour else np.repeat(px, 3, -1)).convert("RGB").save(tmp_path / kind / cls / f"{i}.png")
    colour = load_split(f"folder:{tmp_path / 'colour'}", "train", size=28)
    assert colour.images.shape[1:] == (28, 28, 3) and colour.info.n_channels == 3
    assert dataset_info(f"folder:{tmp_path / 'colour'}").n_channels == 3  # what a model for it is built with
    grey = load_split(f"folder:{tmp_path / 'grey'}", "train", size=28)
    assert grey.images.shape[1:] == (28, 28, 1) and grey.info.n_channels == 1
    # a model trained on the colour folder when folders were always grey is checked and fed as it was trained
    from qsal.checkpoint import check_model_fits_data

    arch = {"name": "small_cnn", "num_classes": 2, "in_channels": 1}
    check_model_fits_data(arch, dataset_info(f"folder:{tmp_path / 'colour'}", 1), "old.safetensors")
    as_trained = load_split(f"folder:{tmp_path / 'colour'}", "train", size=28, n_channels=1)
    assert as_trained.images.shape[1:] == (28, 28, 1)
    # grey pictures with a transparent corner of another colour (not shown) stay grey
    (tmp_path / "rgba" / "a").mkdir(parents=True)
    (tmp_path / "rgba" / "b").mkdir(parents=True)
    for cls in ("a", "b"):
        px = np.zeros((32, 32, 4), np.uint8)
        px[..., :3], px[..., 3] = np.add.outer(np.arange(32), np.arange(32))[..., None], 255
        px[0, 0] = (255, 0, 0, 0)
        Image.fromarray(px).save(tmp_path / "rgba" / cls / "0.png")
    from qsal.data.folder import folder_channels

    assert folder_channels(tmp_path / "rgba") == 1


def test_a_blank_picture_is_judged_on_its_own_values_whatever_the_model_reads(tmp_path):
    from PIL import Image

    from qsal.data.folder import read_image
    from qsal.errors import QsalError

    Image.fromarray(np.tile(np.array([200, 30, 30], np.uint8), (30, 30, 1))).save(tmp_path / "red.png")
    for channels in (1, 3):  # one colour throughout: refused for a grey model and a colour one alike
        with pytest.raises(QsalError, match=r"red.png holds one colour \(200, 30, 30\) in every pixel, a blank image"):
            read_image(tmp_path / "red.png", channels, 28)
    # a 16-bit gradient too narrow for two 8-bit levels is a picture (the file's values differ), read as it scales
    Image.fromarray((30000 + 4 * np.tile(np.arange(30), (30, 1))).astype(np.uint16)).save(tmp_path / "narrow.png")
    assert read_image(tmp_path / "narrow.png", 1, 28).shape == (28, 28)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):  # minimal Range support, like Zenodo's
        data = self.server.payload
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


def test_download_resumes_checks_md5_and_is_atomic(tmp_path):
    payload = bytes(range(256)) * 4096
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    server.payload = payload
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/f.npz"
    try:
        dest = tmp_path / "f.npz"
        (tmp_path / "f.npz.part").write_bytes(payload[:1000])  # an interrupted earlier download
        download_file(url, dest, hashlib.md5(payload).hexdigest(), progress=False)
        assert dest.read_bytes() == payload and not (tmp_path / "f.npz.part").exists()
        with pytest.raises(QsalError, match="expected 0+; the partial file was removed"):
            download_file(url, tmp_path / "g.npz", "0" * 32, progress=False)
        assert not (tmp_path / "g.npz").exists()
    finally:
        server.shutdown()
    with pytest.raises(QsalError, match="cannot reach .*place it at"):
        download_file(url, tmp_path / "h.npz", None, progress=False, timeout_s=2)


def test_random_shift_moves_content_by_at_most_max_px():
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 14, 14] = 1.0
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    pos = out[:, 0].flatten(1).argmax(dim=1)
    rows, cols = pos // 28, pos % 28
    assert ((rows - 14).abs() <= 2).all() and ((cols - 14).abs() <= 2).all()
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(8))
    # the widest shift reflect padding can draw is one less than the shorter side; wider is refused, not garbled
    assert random_shift(torch.rand(2, 1, 6, 9), 5, torch.Generator().manual_seed(0)).shape == (2, 1, 6, 9)
    with pytest.raises(QsalError, match=r"shift_px 6 is as large as the images \(6x9 px\); use a shift below 6 px"):
        random_shift(torch.rand(2, 1, 6, 9), 6, torch.Generator().manual_seed(0))


def test_rotate_zoom_geometry_rotates_counter_clockwise_and_magnifies_about_the_centre():
    square = torch.arange(2 * 16.0).view(2, 1, 4, 4)
    quarter = rotate_zoom(square, torch.tensor([90.0, -90.0]), torch.ones(2))
    torch.testing.assert_close(quarter[0], torch.rot90(square[0], 1, (1, 2)))  # counter-clockwise as displayed
    torch.testing.assert_close(quarter[1], torch.rot90(square[1], -1, (1, 2)))
    wide = torch.arange(24.0).view(1, 1, 4, 6)  # the aspect correction: a half turn of a non-square image
    torch.testing.assert_close(rotate_zoom(wide, torch.tensor([180.0]), torch.ones(1)), wide.flip(2, 3))
    torch.testing.assert_close(rotate_zoom(wide, torch.zeros(1), torch.ones(1)), wide)
    dot = torch.zeros(1, 1, 8, 8)
    dot[..., 3:5, 3:5] = 1.0  # a 2x2 square at the centre: zoom 2 doubles its side, so its mass grows 4-fold
    big = rotate_zoom(dot, torch.zeros(1), torch.full((1,), 2.0))
    assert big.sum().item() == pytest.approx(16.0) and big[0, 0, 2:6, 2:6].gt(0.5).all() and big[0, 0, 0].eq(0).all()


def test_random_rotate_zoom_reflects_at_borders_and_draws_nothing_when_off():
    flat = torch.full((16, 1, 28, 28), 0.7)  # zero padding would darken the corners of a rotated or shrunk image
    out = random_rotate_zoom(flat, 30.0, 0.2, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, flat)
    gen = torch.Generator().manual_seed(3)
    before = gen.get_state()
    x = torch.rand(4, 1, 28, 28)
    assert random_rotate_zoom(x, None, 0.0, gen) is x and torch.equal(gen.get_state(), before)
    moved = random_rotate_zoom(x, 15.0, None, gen)
    assert not torch.equal(gen.get_state(), before) and (moved - x).abs().amax(dim=(1, 2, 3)).gt(0.01).all()


def test_channel_conversion_both_ways():
    gray = load_split("breastmnist", "test")
    rgb = gray.with_channels(3)
    assert rgb.images.shape[-1] == 3 and rgb.info.n_channels == 3 and len(rgb.info.mean) == 3
    np.testing.assert_array_equal(rgb.images[..., 2], gray.images[..., 0])
    back = rgb.with_channels(1)
    np.testing.assert_array_equal(back.images, gray.images)  # luma of an equal-channel pixel is the pixel
    assert rgb.tensors()[0].shape[1] == 3
