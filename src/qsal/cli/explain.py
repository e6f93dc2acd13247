"""``qsal explain``: saliency grid PNGs for a checkpoint (any method) or an ONNX file (occlusion)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qsal.cli.arguments import int_range
from qsal.errors import QsalError


MAX_IMAGES = 256  # rows of one figure


def explain_file(model_path: str, *, method: str | None, n: int, split: str, data_dir, out: str,
                 dataset: str | None = None, seed: int = 0, images: list[str] | None = None,
                 skip_unreadable: bool = False) -> dict:
    """Explain ``n`` images of the model's own dataset, or the image files ``images`` names (PNG/JPEG/DICOM files,
    folders, globs: read as ``qsal predict`` reads them), and write a PNG grid (image, map, overlay).

    Each row's predicted class is the one ``qsal predict`` gives for that image (the stored operating point and
    temperature: ``runtime.decide``), and its map explains that class. Images are normalised with the model's own
    mean/std (``Runtime.preprocess``: a model that records none is refused, as ``qsal predict`` refuses it);
    integrated gradients and occlusion start from / fill with black. ``method`` None: occlusion for an ONNX file,
    integrated gradients for a checkpoint. With ``dataset`` another set's images are explained: "true" names their
    class in that set, "pred" the model's own class names. An image file that cannot be read stops the figure, unless
    ``skip_unreadable``: then it is listed under ``skipped`` with its reason (as ``qsal predict --skip-unreadable``).
    """
    from qsal.runtime import describe_decision
    from qsal.saliency.methods import black_baseline
    from qsal.saliency.onnx_occlusion import occlusion_patch
    from qsal.saliency.plot import save_saliency_grid, to_display

    if Path(out).suffix.lower() != ".png":
        raise QsalError(f"--out {out}: explain writes a PNG figure; name the file .png")
    if images and dataset:
        raise QsalError("--images explains your image files; --dataset picks a dataset's split: pass one of them")
    if skip_unreadable and not images:
        raise QsalError("--skip-unreadable is about image files that cannot be read: it goes with --images")
    path = Path(model_path)
    onnx_file = path.suffix.lower() == ".onnx"
    if onnx_file:
        from qsal.runtime import Runtime

        method = method or "occlusion"
        if method != "occlusion":
            raise QsalError(f"method {method!r} needs gradients, which an ONNX file does not have; use --method occlusion "
                            "(the default for .onnx) or explain the .safetensors checkpoint")
        rt = Runtime(path)
    else:
        from qsal.predict import CheckpointRuntime

        method = method or "integrated_gradients"
        rt = CheckpointRuntime(path)  # qsal predict's preprocessing and decision for this checkpoint
    if images:
        pixels, true, source, where = _files(rt, images, skip_unreadable)
    else:
        pixels, true, source, where = _split(rt, path, onnx_file, dataset, split, data_dir, n, seed)
    # the model's own normalisation (its training set's mean/std), as the exported file applies it: another
    # dataset's images (--dataset) or a user's files are fed to the model as they would be in deployment
    x = rt.preprocess(pixels)
    logits = rt.run_normalized(x)
    task, decision, names = rt.task, rt.decision, rt.labels
    mean, std = rt.mean.ravel(), rt.std.ravel()
    probs, target = _decided(logits, task, decision)
    if onnx_file:
        from qsal.saliency.onnx_occlusion import occlusion_numpy

        maps = occlusion_numpy(rt.run_normalized, x, target, baseline=black_baseline(mean, std))
    else:
        import torch

        from qsal.saliency import explain

        maps = explain(rt.model, torch.from_numpy(x), method, target=torch.from_numpy(target),
                       baseline=black_baseline(mean, std)).numpy()
    if not images and n > len(x):  # asked for more than the split holds: all of them, said
        import sys

        print(f"note: --n {n}: the {split} split of {where['dataset']} holds {len(x)} images; all of them are "
              "explained", file=sys.stderr)
    names = _class_names(names, logits.shape[1])
    rule = describe_decision(task, decision, names) if not task.startswith("multi-label") else \
        "the highest-scoring label (each label is decided at p > 0.5)"
    # an all-zero map (Grad-CAM of a class the evidence is against) drawn black reads as "nothing mattered": said
    empty = [not np.any(m) for m in maps]
    if target.ndim != 1 or (true is None and not where.get("files")):  # multi-label labels: no one true class
        captions = None
    else:  # what each row is: its true class in a dataset, its file name for a user's image
        firsts = [f"true: {true[1][int(t)][:16]}" for t in true[0]] if true is not None else \
            [Path(f).name[:22] for f in where["files"]]
        captions = [f"{first}\npred: {names[int(p)][:16]}" + _why(probs[i], int(p), task, decision, names)
                    + ("\nempty map: no evidence for it" if empty[i] else "")
                    for i, (first, p) in enumerate(zip(firsts, target))]
    # occlusion's patch scales with the image (onnx_occlusion.occlusion_patch): the figure and result say its size
    patch = occlusion_patch(*x.shape[-2:]) if method == "occlusion" else None
    said_method = f"{method} ({patch[0]} px patches moved by {patch[1]} px)" if patch else method
    kind = "ONNX file, onnxruntime" if onnx_file else "PyTorch checkpoint"
    column = f"{path.parent.name}/{path.name}" if path.parent.name else path.name  # "m.onnx", not "/m"
    png = save_saliency_grid(to_display(x, tuple(mean), tuple(std)), {f"{column} ({kind})": maps}, out, captions,
                             title=f"{source}: {said_method} maps of the predicted class; pred = {rule}")
    from qsal.checkpoint import resolve_checkpoint_path
    from qsal.run_folder import file_sha256

    weights = path if onnx_file else resolve_checkpoint_path(path)  # the file whose numbers made the maps
    decided_p = probs[np.arange(len(x)), target] if target.ndim == 1 else None
    # "probability_of_predicted" is each row's own predicted class's (the class differs between rows)
    return {"png": str(png), "model": str(path), "model_sha256": file_sha256(weights),
            "explained": f"{kind}: maps of each image's predicted class", "method": method,
            **({"occlusion_patch_px": {"window": patch[0], "stride": patch[1]}} if patch else {}), **where,
            "images": len(x), "empty_maps": [i for i, e in enumerate(empty) if e],
            "predicted": target.tolist(),
            "predicted_class": [names[int(t)] for t in target] if target.ndim == 1 else None,
            "probability_of_predicted": None if decided_p is None else [round(float(p), 6) for p in decided_p],
            "decided_by": rule}


def _files(rt, images: list[str], skip_unreadable: bool = False):
    """``(pixels (N, H, W, C) uint8, None, title words, {"files": [...], "skipped": [{"file", "reason"}]})`` of a
    user's image files, each read and converted as ``qsal predict`` reads it for this model (conversions said once, as
    there); one that cannot be read stops it, or with ``skip_unreadable`` is listed under ``skipped``."""
    from qsal.data.folder import conversion_notes
    from qsal.errors import printable_path
    from qsal.predict import image_files, read_or_skip

    files = image_files(images)
    if len(files) > MAX_IMAGES:
        raise QsalError(f"{len(files)} images named; one figure explains at most {MAX_IMAGES} (a row each): name fewer")
    notes: dict[str, int] = {}
    read, used, skipped = [], [], []
    for f in files:
        pixels = read_or_skip(rt.read_file, f, notes, skip_unreadable, len(files) > 1, skipped, "explains the others")
        if pixels is not None:
            read.append(pixels)
            used.append(f)
    if not used:
        raise QsalError(f"none of the {len(files)} images could be used; the first: {skipped[0]['reason']}")
    import sys

    for said in conversion_notes(notes, len(used), " named", rt.input_shape[1]):
        print(f"note: {said}", file=sys.stderr)
    for skip in skipped:
        print(f"note: skipped {skip['file']}: {skip['reason']}", file=sys.stderr)
    where = {"files": [printable_path(str(f)) for f in used]} | ({"skipped": skipped} if skip_unreadable else {})
    return np.concatenate(read), None, f"{len(used)} image file{'s' if len(used) > 1 else ''}", where


def _split(rt, path: Path, onnx_file: bool, dataset: str | None, split: str, data_dir, n: int, seed: int):
    """``(pixels, (labels, their class names), title words, {"dataset", "split", "indices"[, "files"]})`` of ``n``
    images of a dataset's split: the model's own (split by its training seed: another seed's test part holds images
    it trained on), or ``dataset``'s."""
    from qsal.data import load_split

    data = rt.meta.get("data") or {}
    if onnx_file:
        name = dataset or data.get("name")
        if not name:
            raise QsalError(f"{path} does not name its dataset in its metadata; pass --dataset")
        c, h, w = rt.input_shape
        data_seed = _own_split_seed({"data": data}, data, name)
        full = load_split(name, split, data_dir, size=h, n_channels=c, seed=data_seed)  # a folder at the file's size
        own = data
    else:
        from qsal.checkpoint import check_model_fits_data
        from qsal.pipeline import dataset_info

        recorded = rt.meta.get("dataset") or {}
        name = dataset or (recorded or data).get("name")
        if not name:
            raise QsalError(f"{path} does not name its dataset; pass --dataset")
        c = rt.meta["arch"].get("in_channels")  # a folder is read as the model was trained on it
        check_model_fits_data(rt.meta["arch"], dataset_info(name, c), str(path))
        own = recorded or data
        data_seed = _own_split_seed(rt.meta, own, name)
        full = load_split(name, split, data_dir, size=recorded.get("image_size"), n_channels=c, seed=data_seed)
    _check_own_data(path, own, name, full)
    chosen, indices = full.subset(n, seed), full.subset_indices(n, seed)
    if onnx_file:
        if chosen.info.n_channels != c or chosen.images.shape[1:3] != (h, w):
            raise QsalError(f"{name} images are {chosen.images.shape[1]} px with {chosen.info.n_channels} "
                            f"channel(s) but {path} takes {h} px with {c}; pass the dataset it was exported for")
        if chosen.info.num_classes != rt.n_outputs:  # as a checkpoint is refused (check_model_fits_data)
            raise QsalError(f"{name} has {chosen.info.num_classes} classes but {path} scores {rt.n_outputs}; "
                            "pass the dataset it was trained on")
    true = (np.atleast_1d(chosen.labels), list(chosen.info.labels)) if chosen.labels.ndim == 1 else None
    # which images: their positions in the split (load_split(dataset, split).images[i]), so a row can be traced to
    # its scan
    where = {"dataset": chosen.info.name, "split": split, "indices": indices.tolist(),
             **_folder_files(name, split, data_seed, indices)}
    return chosen.images, true, f"{chosen.info.name} {split}", where


def _own_split_seed(meta: dict, own: dict, name: str) -> int:
    """The seed that split the model's own data (``pipeline.split_seed``); another dataset (``--dataset``) is read as
    ``qsal evaluate --other-dataset`` reads it, split by seed 0: the model's seed means nothing to its split."""
    from qsal.data import dataset_key
    from qsal.pipeline import split_seed

    same = not own.get("name") or dataset_key(own["name"]) == dataset_key(name)
    return split_seed(meta) if same else 0


def _check_own_data(path: Path, own: dict, name: str, data) -> None:
    """Explaining another dataset's images is allowed (``--dataset``), and said; the model's own folder must still
    hold the files it was split from (``folder.check_same_listing``)."""
    import sys

    from qsal.data import dataset_key
    from qsal.data.folder import check_same_listing

    if own.get("name") and dataset_key(own["name"]) != dataset_key(name):
        print(f"note: {path} was trained on {own['name']}; explaining images of {name} (--dataset): its maps show "
              "what the model attends to on data it never saw", file=sys.stderr)
    elif own.get("name"):
        check_same_listing(data, own.get("listing_sha256"), str(path))


def _folder_files(name: str, split: str, seed: int, indices: np.ndarray) -> dict:
    """``{"files": [path of each explained image, relative to the folder]}`` for a folder dataset (its ``indices``
    alone name positions in a drawn split); ``{}`` for a table dataset, whose split files are fixed."""
    if not name.startswith("folder:"):
        return {}
    from qsal.data.folder import folder_root, folder_split_files
    from qsal.errors import printable_path

    files = folder_split_files(folder_root(name), seed=seed)[split]
    return {"files": [printable_path(files[int(i)][0]) for i in indices]}


def _decided(logits: np.ndarray, task: str, decision: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities (N, K) at the stored temperature, the class each row's map explains (N,))``: the class
    ``qsal predict`` decides (operating point); for a multi-label model, which decides each label apart, the
    highest-scoring label."""
    from qsal.metrics import scores_from_logits
    from qsal.runtime import decide

    probs = scores_from_logits(logits, task, float((decision or {}).get("temperature") or 1.0))
    return probs, (logits.argmax(axis=1) if task.startswith("multi-label") else decide(probs, task, decision))


def _why(probs: np.ndarray, predicted: int, task: str, decision: dict | None, names: list[str]) -> str:
    """A row's evidence for its decision: at an operating point, the positive class's probability against the
    threshold ("p(malignant) 0.368 >= 0.366": a predicted class at 0.37 reads as a mistake without it), else the
    predicted class's probability."""
    op = (decision or {}).get("operating_point")
    if task == "binary-class" and op and op.get("threshold") is not None:
        pos = int((decision or {}).get("positive_label", 1))
        threshold = float(op["threshold"])
        sign = ">=" if probs[pos] >= threshold else "<"
        p, digits = float(probs[pos]), 3
        # as many significant digits as tell the two apart (a Youden threshold of 0.00123 is not "0.000")
        while digits < 8 and p != threshold and f"{p:.{digits}g}" == f"{threshold:.{digits}g}":
            digits += 1
        return f"\np({names[pos][:16]}) {p:.{digits}g} {sign} {threshold:.{digits}g}"
    return f" {probs[predicted]:.2f}"


def _class_names(names, k: int) -> list[str]:
    """The model's class names, or their ids where the model does not record them."""
    if isinstance(names, dict):  # {"0": name, ...}
        names = [names[k] for k in sorted(names, key=lambda k: int(k) if str(k).isdigit() else -1)]
    names = [str(v) for v in names or []]
    return names if len(names) == k else [str(i) for i in range(k)]


def cmd_explain(args):
    from qsal.cli.output import check_out, note_unfinished, print_result

    check_out(args.out, {args.model: "the model"}, args.force, example="saliency.png")
    note_unfinished(args.model, args.quiet)

    print_result(explain_file(args.model, method=args.method, n=args.n, split=args.split, data_dir=args.data_dir,
                              out=args.out, dataset=args.dataset, seed=args.seed, images=args.images,
                              skip_unreadable=args.skip_unreadable), args.json)


def _setup_explain(p):
    from qsal.saliency.methods import METHODS

    p.add_argument("model", help="a checkpoint (.safetensors) or an exported .onnx (occlusion only)")
    p.add_argument("--method", choices=METHODS,
                   help="attribution method (default: integrated_gradients for a checkpoint, occlusion for an .onnx)")
    p.add_argument("--images", nargs="+", metavar="PATH",
                   help="explain these image files (PNG/JPEG/DICOM, folders, globs; read as qsal predict reads them, "
                        "at most 256) instead of a dataset split (--n, --split, --seed do not apply)")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="with --images: explain the images that can be read and list the others with the reason "
                        "(default: an unreadable image stops it)")
    p.add_argument("--n", type=int_range(1, 256, "the number of images"), default=8, help="number of images, one row each (1-256)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split the images come from")
    p.add_argument("--dataset", help="override the dataset recorded in the model (default: the model's own)")
    p.add_argument("--data-dir", help="data root (default: $QSAL_DATA_DIR, then ~/.medmnist)")
    p.add_argument("--seed", type=int_range(0, 2**32 - 1, "a seed"), default=0, help="seed of the image sample")
    p.add_argument("--out", default="saliency.png", help="output PNG (an existing file only with --force)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")


def register(command, setup: dict) -> None:
    command("explain", "saliency maps as a PNG grid (image, map, overlay); ONNX models via occlusion")(cmd_explain)
    setup["explain"] = _setup_explain
