"""Saliency grids: the title clears the column headers and no row label is cut off, at any row count."""

import numpy as np
import pytest

from qsal.saliency.plot import saliency_grid_figure, save_saliency_grid


@pytest.mark.parametrize("n,overlay_only", [(2, False), (16, False), (8, True)])
def test_title_headers_and_row_labels_do_not_collide(n, overlay_only):
    rng = np.random.default_rng(0)
    captions = [f"true: normal, benign\npred: malignant 0.{i:02d}" for i in range(n)]
    fig = saliency_grid_figure(rng.random((n, 28, 28)), {"pact-4/best": rng.random((n, 1, 28, 28))}, captions,
                               title="breastmnist test: integrated gradients", overlay_only=overlay_only,
                               cell_captions={"pact-4/best": ["malignant 0.91"] * n})
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(renderer)
    headers = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    assert headers and all(title.y0 >= h.y1 - 0.5 for h in headers)  # title above every column header
    page = fig.bbox
    for ax in fig.axes:
        for text in (ax.yaxis.label, ax.xaxis.label, ax.title):
            if text.get_text():
                box = text.get_window_extent(renderer)
                assert box.x0 >= page.x0 - 0.5 and box.x1 <= page.x1 + 0.5 and box.y0 >= page.y0 - 0.5, text.get_text()


def test_grid_png_has_a_colour_bar(tmp_path):
    rng = np.random.default_rng(0)
    path = save_saliency_grid(rng.random((2, 28, 28)), {"m": rng.random((2, 1, 28, 28))}, tmp_path / "g.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    fig = saliency_grid_figure(rng.random((2, 28, 28)), {"m": rng.random((2, 1, 28, 28))})
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)


@pytest.mark.parametrize("overlay_only", [False, True])
def test_long_model_names_wrap_instead_of_running_into_the_next_header(overlay_only):
    """explain's column header "fp32/best.safetensors (PyTorch checkpoint)" ran over the next column's."""
    rng = np.random.default_rng(0)
    names = ["fp32/best.safetensors (PyTorch checkpoint)", "pact-4/model.onnx (ONNX file, onnxruntime)"]
    fig = saliency_grid_figure(rng.random((2, 28, 28)), {k: rng.random((2, 1, 28, 28)) for k in names},
                               overlay_only=overlay_only)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = sorted((ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()), key=lambda b: b.x0)
    assert len(boxes) == (3 if overlay_only else 5)
    assert all(left.x1 <= right.x0 + 0.5 for left, right in zip(boxes, boxes[1:]))


def test_explain_rows_show_the_positive_probability_against_the_threshold():
    """A row read "pred: malignant 0.37" with no threshold: a malignant call at 0.37 looked like a mistake."""
    from qsal.cli.explain import _why

    decision = {"positive_label": 0, "operating_point": {"rule": "youden", "threshold": 0.366}}
    names = ["malignant", "normal, benign"]
    assert _why(np.array([0.368, 0.632]), 0, "binary-class", decision, names) == "\np(malignant) 0.368 >= 0.366"
    assert _why(np.array([0.301, 0.699]), 1, "binary-class", decision, names) == "\np(malignant) 0.301 < 0.366"
    assert _why(np.array([0.2, 0.7, 0.1]), 1, "multi-class", None, ["a", "b", "c"]) == " 0.70"


def test_explain_rows_give_a_small_threshold_the_digits_that_tell_it_apart():
    """A Youden threshold of 0.00047 read "p(malignant) 0.000 < 0.000"."""
    from qsal.cli.explain import _why

    names = ["malignant", "normal, benign"]
    tiny = {"positive_label": 0, "operating_point": {"threshold": 0.00047}}
    assert _why(np.array([0.0003, 0.9997]), 1, "binary-class", tiny, names) == "\np(malignant) 0.0003 < 0.00047"
    close = {"positive_label": 0, "operating_point": {"threshold": 0.36545}}
    assert _why(np.array([0.3654, 0.6346]), 1, "binary-class", close, names) == "\np(malignant) 0.3654 < 0.36545"
