"""Run an exported model with onnxruntime, onnx (its metadata) and numpy (Pillow to read image files): importing or
using this module never imports torch, scikit-learn or SciPy.

    >>> from qsal.runtime import Runtime
    >>> rt = Runtime("model.onnx", threads=1)
    >>> probs = rt.predict_proba(images_uint8)   # (N, H, W) or (N, H, W, C) uint8 -> (N, K)
    >>> rt.predict_file("scan.png")              # {"file", "probabilities": {class: p}, "predicted_class", ...}

Preprocessing (scale to [0, 1], per-channel mean/std) is read from the model's own metadata, so it
is the same as in training; files and images of any size are converted to the model's channels and
size by the rule recorded at export (PIL ``convert`` + bilinear resize, the folder loader's rule). The
decision (positive class, operating point chosen on validation, temperature) is read from there too.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

from qsal.errors import QsalError, is_integer, is_utf8_path, quote
from qsal.metrics.operating_point import describe_operating_point, validate_decision, validate_labels

__all__ = ["Runtime", "read_metadata", "validate_metadata", "conform_image", "decide", "describe_decision",
           "NO_OPERATING_POINT", "integer_kernels_saturate", "session_options", "SATURATION_NOTE",
           "has_integer_layers", "sums_fit_int16", "INT16_MAX", "OVERRIDE_NOTE", "kernel_notes",
           "kernel_notes_here", "KERNEL_NOTE_KEYS"]

# onnxruntime's x86-64 integer kernels without VNNI multiply uint8 activations by int8 weights with vpmaddubsw, which
# adds two products into an int16 with saturation (255 x 127 x 2 > 32767): an 8-bit layer's sums clip, and the file
# computes other numbers than the model qsal validated (measured on an AMD EPYC without VNNI: a ResNet-20 INT8 file
# decided 6 % of BreastMNIST test images otherwise; onnxruntime's quantization guide advises 7-bit weights,
# reduce_range, on such CPUs). VNNI (AVX512-VNNI, AVX-VNNI) sums in int32; ARM has no such step. onnxruntime's own
# remedy, session.x64quantprecision, converts each weight tensor with a code outside [-64, 64] to uint8 at load and runs
# its layer on the u8 x u8 kernels, which widen to int16 before multiplying: exact, slower than u8 x s8, and faster than
# the dequantized float graph (measured here: benchmarks/results/no_vnni_latency.md).
SATURATION_NOTE = ("this CPU has no VNNI, where onnxruntime's fast 8-bit integer kernels (u8 x s8) saturate their "
                   "int16 sums: qsal runs the layers with weight codes outside [-64, 64] on its exact, slower u8 x u8 "
                   "kernels (session.x64quantprecision); a PTQ file with 7-bit weights (qsal quantize --weight-bits 7) "
                   "keeps the fast ones, and QSAL_INTEGER_KERNELS=1 runs the fast ones anyway (faster, but the "
                   "numbers differ)")
OVERRIDE_NOTE = ("QSAL_INTEGER_KERNELS=1 on a CPU without VNNI: the fast integer kernels ran although their int16 sums "
                 "saturate here, so these numbers can differ from the model qsal validated; unset it for the exact "
                 "kernels")


INT16_MAX = 32767


@functools.cache  # the CPU does not change while qsal runs: read its flags once, not for every session
def integer_kernels_saturate() -> bool:
    """Whether onnxruntime's u8s8 integer kernels saturate on this CPU: x86-64 without AVX512-VNNI or AVX-VNNI."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "x86", "i386", "i686"):
        return False
    try:  # Linux names both AVX512-VNNI and AVX-VNNI (Alder Lake and newer, 256-bit)
        return not set(Path("/proc/cpuinfo").read_text(errors="replace").split()) & {"avx512_vnni", "avx_vnni"}
    except OSError:  # another system: numpy's CPU detection, which names AVX512-VNNI only
        pass
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features
        except ImportError:
            return True  # not known: the exact kernels give the validated numbers either way
    return not features.get("AVX512VNNI")


def has_integer_layers(meta: dict) -> bool:
    """Whether a file (its ONNX metadata ``meta``) has layers onnxruntime runs on integer kernels with QDQ fusion on:
    every conv/gemm (``integer_kernels``, measured at export) or some, beside layers kept in FP32 (``integer +
    float``). An FP32 file has none, nor has a weight-only one (its weights are dequantized into float kernels):
    neither quantizes an activation, which is what export's ``quantization.activations`` lists."""
    if meta.get("integer_kernels"):
        return True
    described = meta.get("quantization")
    if isinstance(described, dict):
        return bool(described.get("activations"))
    quant = meta.get("quant")  # a file whose export did not describe its quantization: its method says
    return isinstance(quant, dict) and quant.get("method", "fp32") not in ("fp32", "weight_only")


def sums_fit_int16(meta: dict | None) -> bool:
    """Whether a file's integer kernels compute exactly where they saturate: every pair of products fits in int16
    (its metadata's ``int16_pair_sum_bound``, measured on onnxruntime's optimised graph at export, at most
    ``INT16_MAX``: 7-bit weights beside 8-bit activations, or activations of at most 7 bits beside 8-bit weights)."""
    bound = (meta or {}).get("int16_pair_sum_bound")
    return is_integer(bound) and 0 <= bound <= INT16_MAX


def session_options(threads: int | None = None, meta: dict | None = None):
    """The onnxruntime CPU session options every qsal run of a deployed file uses (``Runtime``, bench): defaults but
    for the thread count and, where ``integer_kernels_saturate`` and the file's sums may not fit
    (``sums_fit_int16(meta)``; ``meta``: its ONNX metadata, None when unknown), onnxruntime's exact kernels for the
    layers that need them (``session.x64quantprecision``: weights with a code outside [-64, 64] run as u8 x u8).
    Returns ``(options, note)``: ``note`` is ``SATURATION_NOTE`` where that is on, ``OVERRIDE_NOTE`` where
    ``QSAL_INTEGER_KERNELS=1`` kept the fast kernels there, else ``None``; another value of it is a ``QsalError``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    choice = os.environ.get("QSAL_INTEGER_KERNELS")
    if choice not in (None, "", "0", "1"):
        raise QsalError(f"QSAL_INTEGER_KERNELS={choice!r}: set it to 1 (onnxruntime's fast integer kernels even where "
                        "they saturate) or unset it")
    if integer_kernels_saturate() and not sums_fit_int16(meta):
        if choice == "1":  # the user's choice, recorded: these numbers are not the validated model's
            return opts, OVERRIDE_NOTE
        opts.add_session_config_entry("session.x64quantprecision", "1")
        return opts, SATURATION_NOTE
    return opts, None


# the keys a result records the kernels under where a CPU without VNNI chose them (``kernel_notes``)
KERNEL_NOTE_KEYS = ("u8u8_kernels", "saturating_kernels")


def kernel_notes(meta: dict, note: str | None) -> dict:
    """What a result records about the kernels a file (ONNX metadata ``meta``) ran on here, given
    ``session_options``' ``note``: ``{"u8u8_kernels": note}`` (exact kernels for its 8-bit layers, no VNNI),
    ``{"saturating_kernels": note}`` (the fast ones although they saturate: QSAL_INTEGER_KERNELS=1), or ``{}``."""
    if not note or not has_integer_layers(meta):
        return {}
    return {"saturating_kernels" if note == OVERRIDE_NOTE else "u8u8_kernels": note}


def kernel_notes_here(meta: dict) -> dict:
    """``kernel_notes`` of the session qsal would open for a file (ONNX metadata ``meta``) on this CPU, without opening
    one: what export and bench record about the kernels predict and evaluate will run it on."""
    return kernel_notes(meta, session_options(meta=meta)[1])


def conform_image(image: np.ndarray, n_channels: int, size: int) -> np.ndarray:
    """A uint8 ``(H, W)`` / ``(H, W, C)`` image of any size -> ``(size, size, n_channels)``, converted and resized
    as ``qsal.data.folder`` reads training images (PIL ``convert('L'|'RGB')``, bilinear resize), with its limit:
    an image that would be upscaled more than ``MAX_UPSCALE`` times is refused, as an image file is."""
    from PIL import Image

    from qsal.data.folder import MAX_UPSCALE

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3, 4)):
        raise QsalError(f"an image must be uint8 (H, W) or (H, W, 1|3|4) pixels, got {image.dtype} {image.shape}")
    if min(image.shape[:2]) * MAX_UPSCALE < size:
        raise QsalError(f"an image of {image.shape[1]}x{image.shape[0]} px resized to {size} px would be upscaled more "
                        f"than {MAX_UPSCALE}x, inventing the detail the model reads; pass the image at a larger size")
    pil = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
    pil = pil.convert("L" if n_channels == 1 else "RGB")
    if pil.size != (size, size):
        pil = pil.resize((size, size), Image.BILINEAR)
    return np.asarray(pil, dtype=np.uint8).reshape(size, size, n_channels)


def decide(probs: np.ndarray, task: str, decision: dict | None) -> np.ndarray:
    """Predicted class ids ``(N,)`` from probabilities ``(N, K)``: binary at the stored operating point
    (``p(positive) >= threshold``; 0.5 on label 1 without one), argmax for multi-class, and a 0/1
    ``(N, K)`` matrix at 0.5 for multi-label."""
    if task.startswith("multi-label"):
        return (probs > 0.5).astype(np.int64)
    decision = decision or {}
    op = decision.get("operating_point")
    if task == "binary-class" and op:
        pos = int(decision.get("positive_label", 1))
        return np.where(probs[:, pos] >= float(op["threshold"]), pos, 1 - pos).astype(np.int64)
    if task == "binary-class":
        return (probs[:, -1] > 0.5).astype(np.int64)
    return probs.argmax(axis=1).astype(np.int64)


# How a binary model without a chosen operating point decides (a checkpoint from the Python API's fit, or from a
# run cut off before it chose one): the same words in predict's decided_by, explain's title and the model card.
NO_OPERATING_POINT = "the most probable class (no operating point was chosen)"


def describe_decision(task: str, decision: dict | None, names: list[str]) -> str:
    """The rule ``decide`` applies, in words, for each prediction's ``decided_by`` (CSV column): for a binary
    model with an operating point, ``p(malignant) >= 0.0472 (sensitivity:0.95, chosen on the validation split)``."""
    if task.startswith("multi-label"):
        return "p > 0.5 per label"
    decision = decision or {}
    op = decision.get("operating_point")
    if task == "binary-class" and op:
        pos = int(decision.get("positive_label", 1))
        return describe_operating_point(op, names[pos] if pos < len(names) else str(pos))
    if task == "binary-class":  # one wording with the model card's (qsal.export.model_card)
        return NO_OPERATING_POINT
    return "argmax"


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``qsal`` metadata JSON embedded in an exported ONNX file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise QsalError(f"model file {path} not found")
    if path.stat().st_size == 0:
        raise QsalError(f"model file {path} is empty (0 bytes); the export was interrupted or the copy failed: export it again")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a corrupt file
        raise QsalError(f"{path} is not a readable ONNX file ({type(e).__name__}); re-export it with qsal export") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "qsal" not in props:
        raise QsalError(f"{path} was not exported by qsal (no 'qsal' metadata); export it with `qsal export`")
    try:
        meta = json.loads(props["qsal"])
    except json.JSONDecodeError as e:
        raise QsalError(f"{path}: its 'qsal' metadata is not valid JSON ({e}); re-export it with qsal export") from None
    return validate_metadata(meta, path)


def exported_from(onnx_path: str | os.PathLike, checkpoint_sha256: str) -> bool:
    """Whether ``onnx_path`` was exported from the checkpoint whose file hashes to ``checkpoint_sha256`` (its
    metadata's ``checkpoint_sha256``): files are named ``best.safetensors`` / ``model.onnx`` everywhere, so names
    cannot tell a retrained or copied-in model apart. A file exported before the hash was recorded never matches."""
    return read_metadata(onnx_path).get("checkpoint_sha256") == checkpoint_sha256


def validate_metadata(meta, path) -> dict:
    """Check the fields inference relies on: ``input_shape`` (C, H, W) and, if given, the preprocessing
    ``data.mean`` / ``data.std`` (finite, std > 0, one value or one per channel)."""
    fix = "re-export it with qsal export"

    if not isinstance(meta, dict):
        raise QsalError(f"{path}: its 'qsal' metadata is a {type(meta).__name__}, not a mapping; {fix}")
    shape = meta.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(is_integer(v) and v >= 1 for v in shape)):
        raise QsalError(f"{path}: metadata input_shape must be [channels, height, width] positive integers, got "
                        f"{quote(shape)}; {fix}")
    data = meta.get("data", {})
    if not isinstance(data, dict):
        raise QsalError(f"{path}: metadata 'data' must be a mapping, got {quote(data)}; {fix}")
    if "name" in data and not isinstance(data["name"], str):
        raise QsalError(f"{path}: metadata data.name must be a dataset name, got {quote(data['name'])}; {fix}")
    for key in ("mean", "std"):
        v = data.get(key)
        if v is None:
            continue
        ok = (isinstance(v, list) and len(v) in (1, shape[0])
              and all(isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v))
        if not ok or (key == "std" and any(x <= 0 for x in v)):
            count = "one finite number" if shape[0] == 1 else f"1 or {shape[0]} finite numbers"
            raise QsalError(f"{path}: metadata data.{key} must be {count}"
                            f"{' > 0 (it divides the pixels)' if key == 'std' else ''}, got {quote(v)}; {fix}")
    arch = meta.get("arch", {})
    if not isinstance(arch, dict):
        raise QsalError(f"{path}: metadata 'arch' must be a mapping, got {quote(arch)}; {fix}")
    for section, name, key in ((data, "data", "image_size"), (data, "data", "n_channels"), (arch, "arch", "num_classes")):
        if key in section and not (is_integer(section[key]) and section[key] >= 1):
            raise QsalError(f"{path}: metadata {name}.{key} must be a positive integer, got {quote(section[key])}; "
                            f"{fix}")
    num_classes = arch.get("num_classes")
    validate_labels(data.get("labels"), num_classes, f"{path}: metadata data", fix)
    validate_decision(meta.get("decision"), num_classes, f"{path}: metadata", fix, labels=data.get("labels"))
    return meta


class Runtime:
    """An ONNX Runtime session plus the preprocessing recorded at export.

    Args:
        path: an ONNX file written by ``qsal export``.
        threads: intra-op threads (1 = the single-core edge case; None = onnxruntime's default).
    """

    _normalisation_key = "metadata data.mean / data.std"
    _normalisation_fix = ("export it with `qsal export CHECKPOINT` from a checkpoint that records its training set's "
                          "mean and std (qsal train's do), or pass export_onnx meta={'data': {'mean': [...], "
                          "'std': [...]}}")

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.meta = read_metadata(self.path)
        # Default options (a qsal artifact needs no special session settings to run on integer kernels, so what is
        # measured here is what any onnxruntime application gets), but on a CPU whose fast integer kernels saturate:
        # there its 8-bit layers run on the exact u8 x u8 kernels, and ``kernel_notes`` says so ({} for a file
        # without integer layers, or whose sums fit)
        opts, note = session_options(threads, self.meta)
        self.kernel_notes = kernel_notes(self.meta, note)
        self.u8u8_kernels = self.kernel_notes.get("u8u8_kernels")
        try:
            # a name that is not valid UTF-8 cannot cross into onnxruntime: the file is handed over as bytes
            source = str(self.path) if is_utf8_path(self.path) else self.path.read_bytes()
            self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            raise QsalError(f"onnxruntime cannot load {self.path} ({str(e).splitlines()[0][:200]})") from None
        self.input_name = self.session.get_inputs()[0].name
        data = self.meta.get("data", {})
        # None when the export recorded no normalisation (export_onnx without meta): preprocess refuses, rather than
        # feed the network pixels on a scale it was not trained on and return confident wrong answers
        self.mean = np.asarray(data["mean"], np.float32).reshape(1, -1, 1, 1) if data.get("mean") is not None else None
        self.std = np.asarray(data["std"], np.float32).reshape(1, -1, 1, 1) if data.get("std") is not None else None
        self.input_shape = tuple(self.meta["input_shape"])
        batch, *graph = self.session.get_inputs()[0].shape  # (N, C, H, W): an int where fixed, a name where dynamic
        # a file whose batch size was fixed for an edge runtime (onnxruntime.tools.make_dynamic_shape_fixed, as
        # NNAPI / CoreML want) takes exactly that many images a call: run_normalized feeds it in such batches
        self.fixed_batch = batch if isinstance(batch, int) and batch >= 1 else None
        if len(graph) != 3 or any(isinstance(g, int) and g != m for g, m in zip(graph, self.input_shape)):
            raise QsalError(f"{self.path}: its metadata says input_shape {list(self.input_shape)} but its graph takes "
                            f"{['N', *graph]}; re-export it with qsal export")
        self.task = data.get("task", "multi-class")
        self.labels = data.get("labels")
        self.decision = self.meta.get("decision") or {}
        self.temperature = float(self.decision.get("temperature") or 1.0)

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 ``(N, H, W)`` / ``(N, H, W, C)`` (or one image without N) -> float32 ``(N, C, H, W)``."""
        images = np.asarray(images)
        given = images.shape
        c, h, w = self.input_shape
        if images.dtype != np.uint8:
            raise QsalError(f"images must be uint8 pixels (0-255), got {images.dtype}; use run_normalized() for tensors")
        if images.ndim == 2 or (images.ndim == 3 and images.shape[-1] in (1, 3) and c == images.shape[-1]
                                and images.shape[:2] == (h, w)):
            images = images[None]
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4 or images.shape[1:3] != (h, w) or images.shape[3] != c:
            raise QsalError(f"images have shape {given}; this model takes (N, {h}, {w}) or (N, {h}, {w}, {c}) uint8")
        if self.mean is None or self.std is None:
            raise QsalError(f"{self.path} records no input normalisation ({self._normalisation_key}), so its pixels "
                            f"cannot be prepared as in training; {self._normalisation_fix}, or feed normalised tensors "
                            "to run_normalized()")
        x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        return np.ascontiguousarray((x - self.mean) / self.std, dtype=np.float32)

    def run_normalized(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(N, K)`` for already-normalised float32 input ``(N, C, H, W)``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise QsalError(f"input has shape {x.shape}; this model takes (N, {', '.join(map(str, self.input_shape))})")
        b = self.fixed_batch
        if b is None or len(x) == b:
            return self.session.run(None, {self.input_name: x})[0]
        if len(x) == 0:
            return np.zeros((0, self.n_outputs), np.float32)
        pad = -len(x) % b  # the last call is filled up with copies of the last image; their rows are dropped
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
        return np.concatenate([self.session.run(None, {self.input_name: x[i:i + b]})[0]
                               for i in range(0, len(x), b)])[:len(x) - pad]

    def predict_logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits ``(N, K)`` for uint8 images, in batches of ``batch_size``."""
        x = self.preprocess(images)
        if len(x) == 0:  # an empty batch (a filter that kept no file) gives no rows, as a numpy model would
            return np.zeros((0, self.n_outputs), np.float32)
        return np.concatenate([self.run_normalized(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])

    @property
    def n_outputs(self) -> int:
        """Logits per image ``K``: the graph's output width, else the recorded class names."""
        width = self.session.get_outputs()[0].shape[-1]
        return width if isinstance(width, int) else len(self.labels or [])

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities ``(N, K)`` (sigmoid per label for multi-label models), after dividing the
        logits by the temperature fitted on validation (1.0 if the model was not temperature-scaled)."""
        logits = self.predict_logits(images).astype(np.float64) / self.temperature
        if self.task.startswith("multi-label"):
            return 1 / (1 + np.exp(-logits))
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def predict_image(self, image: np.ndarray) -> dict:
        """One uint8 image of any size (converted like training images) -> a prediction dict (``predict_file``)."""
        c, h, _ = self.input_shape
        return self.prediction(self.predict_proba(conform_image(image, c, h)[None])[0])

    def read_file(self, path: str | os.PathLike, notes: dict[str, int] | None = None) -> np.ndarray:
        """One PNG/JPEG/DICOM file as this model's input pixels, uint8 ``(1, H, W, C)`` (``QsalError`` naming the file
        when it cannot be read; ``notes``: ``qsal.data.folder.read_image``'s conversion counts, added to)."""
        from qsal.data.folder import read_image

        c, h, _ = self.input_shape
        return read_image(Path(path), c, h, notes).reshape(1, h, h, c)

    def predict_file(self, path: str | os.PathLike) -> dict:
        """One PNG/JPEG/DICOM file -> ``{"file", "probabilities": {class name: p}, "decided_by", "predicted_class",
        "predicted_label"}``, the label decided at the stored operating point (``decided_by`` says how)."""
        return {"file": str(path), **self.prediction(self.predict_proba(self.read_file(path))[0])}

    def prediction(self, probs: np.ndarray) -> dict:
        """One image's class probabilities ``(K,)`` -> ``{"probabilities", "decided_by", "predicted_class",
        "predicted_label"}`` at the stored operating point."""
        names = [str(n) for n in (self.labels or range(len(probs)))]
        label = decide(probs[None], self.task, self.decision)[0]
        out = {"probabilities": {n: float(p) for n, p in zip(names, probs)},
               "decided_by": describe_decision(self.task, self.decision, names)}
        if self.task.startswith("multi-label"):
            out["predicted_class"] = ";".join(n for n, on in zip(names, label) if on)
            out["predicted_label"] = [int(v) for v in label]
        else:
            out["predicted_class"], out["predicted_label"] = names[int(label)], int(label)
        return out
