"""Latency and size of deployed artifacts, measured so that the ratios between them can be trusted.

For each network: the FP32 ONNX export, qsal PTQ-INT8, QAT-INT8, PACT-8/4/2, weight-only INT8/INT4, onnxruntime's own
recipe (``quant_pre_process`` then ``quantize_static``, QDQ, per-channel INT8 weights, the same 512
calibration images), Brevitas's QCDQ ONNX export of a 4-bit model (``brevitas.graph.quantize`` with
4-bit weights and activations, calibrated, no fine-tune), and PyTorch eager FP32.

- Every ONNX artifact runs in a *default* onnxruntime session (only the thread count is set).
- All artifacts of one network are timed in one process in interleaved rounds (A B C A B C ..., the
  order rotating each round), each round a burst of calls per artifact; the figure is the median of
  the per-round medians; the JSON keeps every call of every round.
- 1 thread, then all cores; batch 1 and batch 64 of real test images.
- Ratios against the FP32 ONNX file and against qsal's INT8 artifact; each file's size against the
  physical minimum (4 / 1 / 0.5 bytes a parameter for FP32 / 8-bit / <= 4-bit weights).
- Each qsal artifact's argmax agreement with its PyTorch model and both AUCs on the test split.

    python benchmarks/quantization_latency.py --models small_cnn resnet18 --dataset breastmnist

``--artifacts`` times a subset (FP32, PyTorch eager and qsal PTQ-INT8 always: the ratios need them), and
``--no-peers`` leaves out onnxruntime's and Brevitas's files; weight_only_latency.md is

    python benchmarks/quantization_latency.py --models small_cnn --threads 1 --no-peers \
        --artifacts "qsal weight-only INT8" "qsal weight-only INT4" --out benchmarks/results/weight_only_latency

Run it on a quiet machine (nothing else running). The Brevitas peer needs ``pip install -e .[bench-peers]``
(its QCDQ export goes through onnxoptimizer); without it the table records why that row is missing. FP32 checkpoints of ``benchmarks/quantization.py``
(runs/bench/<dataset>_<model>/fp32) are reused when present; otherwise a short FP32 training runs first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, command_line, data_dir, markdown_table  # noqa: E402

from qsal._atomic import write_json_atomic, write_text_atomic  # noqa: E402
from qsal.checkpoint import load_checkpoint  # noqa: E402
from qsal.metrics import compute_metrics, predict_logits  # noqa: E402
from qsal.export.bench import interleaved_latency, onnx_session  # noqa: E402
from qsal.export.fusion import float_compute_ops, int16_pair_sum_bound, optimized_graph  # noqa: E402
from qsal.models import count_parameters  # noqa: E402
from qsal.pipeline import export_checkpoint, load_splits, quantize_checkpoint, train_model  # noqa: E402
from qsal.provenance import environment  # noqa: E402
from qsal.quant import PACTConfig, PTQConfig, QATConfig, WeightOnlyConfig  # noqa: E402
from qsal.runtime import Runtime, integer_kernels_saturate  # noqa: E402
from qsal.export.card_storage import kernels_label  # noqa: E402
from qsal.study.results import DEQUANTIZED_HERE, U8U8_HERE  # noqa: E402
from qsal.train import TrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QSAL_VARIANTS = [("qsal PTQ-INT8", PTQConfig(), 8), ("qsal QAT-INT8", QATConfig(), 8),
                 ("qsal PACT-8", PACTConfig(bits=8), 8), ("qsal PACT-4", PACTConfig(bits=4), 4),
                 ("qsal PACT-2", PACTConfig(bits=2), 2), ("qsal weight-only INT8", WeightOnlyConfig(bits=8), 8),
                 ("qsal weight-only INT4", WeightOnlyConfig(bits=4), 4),
                 # 7-bit weights, 8-bit activations: integer kernels that are exact on x86 CPUs without VNNI too
                 ("qsal PTQ-W7A8", PTQConfig(weight_bits=7), 7)]
INT8 = "qsal PTQ-INT8"
DEQUANTIZED_INT8 = "qsal PTQ-INT8 as its dequantized graph"
SATURATING_INT8 = "qsal PTQ-INT8 on the fast kernels that saturate"
FP32 = "FP32 ONNX"
EAGER = "PyTorch eager FP32"


def _fp32_checkpoint(ds: str, model: str, root: str, work: Path, epochs: int, seed: int) -> Path:
    cached = ROOT / "runs" / "bench" / f"{ds}_{model}" / "fp32" / "best.safetensors"
    if cached.is_file():
        return cached
    out = work / "fp32"
    if not (out / "best.safetensors").is_file():
        train_model(ds, model, TrainConfig(epochs=epochs, seed=seed, progress=False), out, data_dir=root)
    return out / "best.safetensors"


def _ort_peer(fp32_onnx: Path, out: Path, calib: np.ndarray) -> Path:
    """onnxruntime's recommended recipe: quant_pre_process (shape inference + graph optimisation), then
    quantize_static with QDQ, per-channel INT8 weights, uint8 activations."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_name(out.stem + "_preprocessed.onnx")
    quant_pre_process(str(fp32_onnx), str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"pixel_values": calib[i:i + 64]} for i in range(0, len(calib), 64)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return out


def _brevitas_peer(fp32_ckpt: Path, out: Path, calib: np.ndarray, bits: int = 4) -> Path:
    """Brevitas's own flow for a k-bit model: graph quantization with k-bit weights (per tensor, its
    default) and k-bit activations, calibration, QCDQ ONNX export (TorchScript path: its dynamo path
    refuses quantized biases)."""
    import copy
    import warnings

    warnings.filterwarnings("ignore")
    from brevitas.export import export_onnx_qcdq
    from brevitas.graph.calibrate import calibration_mode
    from brevitas.graph.quantize import COMPUTE_LAYER_MAP, QUANT_ACT_MAP, QUANT_IDENTITY_MAP, preprocess_for_quantize, quantize
    from brevitas.quant.scaled_int import Int8ActPerTensorFloat, Int8WeightPerTensorFloat, Uint8ActPerTensorFloat

    weight, uact, sact = (q.let(bit_width=bits) for q in (Int8WeightPerTensorFloat, Uint8ActPerTensorFloat, Int8ActPerTensorFloat))
    layers = copy.deepcopy(COMPUTE_LAYER_MAP)
    for v in layers.values():
        if v is not None and "weight_quant" in v[1]:
            v[1]["weight_quant"] = weight
    acts = copy.deepcopy(QUANT_ACT_MAP)
    for v in acts.values():
        if v[1].get("act_quant") is Uint8ActPerTensorFloat:
            v[1]["act_quant"] = uact
    idents = {"signed": (QUANT_IDENTITY_MAP["signed"][0], {**QUANT_IDENTITY_MAP["signed"][1], "act_quant": sact}),
              "unsigned": (QUANT_IDENTITY_MAP["unsigned"][0], {**QUANT_IDENTITY_MAP["unsigned"][1], "act_quant": uact})}
    model, _ = load_checkpoint(str(fp32_ckpt))
    qmodel = quantize(preprocess_for_quantize(model.eval()), quant_identity_map=idents, compute_layer_map=layers,
                      quant_act_map=acts)
    x = torch.from_numpy(calib)
    with torch.no_grad(), calibration_mode(qmodel):
        for i in range(0, len(x), 64):
            qmodel(x[i:i + 64])
    qmodel.eval()
    export_onnx_qcdq(qmodel, args=x[:1], export_path=str(out), input_names=["pixel_values"], output_names=["logits"],
                     dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    return out


def _adopt_metadata(peer: Path, fp32_onnx: Path, method: str) -> Path:
    """Give a peer's file qsal's preprocessing metadata (from the FP32 export of the same checkpoint) so
    the same runtime can score it; ``integer_kernels`` is read off its own optimised graph."""
    import onnx

    from qsal.runtime import read_metadata

    optimized = optimized_graph(peer)
    meta = {**read_metadata(fp32_onnx), "quant": {"method": method},
            "integer_kernels": not float_compute_ops(optimized),
            # not the FP32 file's 0: the peer's own sums decide whether it runs fused where integer kernels saturate
            "int16_pair_sum_bound": int16_pair_sum_bound(optimized)}
    model = onnx.load(str(peer))
    onnx.helper.set_model_props(model, {"qsal": json.dumps(meta)})
    onnx.save(model, str(peer))
    return peer


def _min_bytes(params: int, weight_bits: int | None) -> float:
    return params * (4.0 if weight_bits is None else 1.0 if weight_bits > 4 else 0.5)


def build_artifacts(ds: str, model: str, root: str, work: Path, args, log) -> tuple[list[dict], Path]:
    train, _, test = load_splits(ds, root, seed=args.seed)
    fp32_ckpt = _fp32_checkpoint(ds, model, root, work, args.fp32_epochs, args.seed)
    fp32_model, _ = load_checkpoint(str(fp32_ckpt))
    params = count_parameters(fp32_model)
    fp32_onnx = work / "fp32.onnx"
    export_checkpoint(str(fp32_ckpt), fp32_onnx, card=False)
    rows = [{"artifact": FP32, "onnx": fp32_onnx, "checkpoint": fp32_ckpt, "weight_bits": None}]
    for name, cfg, bits in QSAL_VARIANTS:
        if args.artifacts and name not in args.artifacts and name != INT8:
            continue
        cell = work / name.removeprefix("qsal ").lower().replace(" ", "_")
        epochs = 0 if isinstance(cfg, (PTQConfig, WeightOnlyConfig)) else args.finetune_epochs
        if not (cell / "best.safetensors").is_file():
            quantize_checkpoint(str(fp32_ckpt), cfg, cell, epochs=epochs, lr=1e-4, data_dir=root, seed=args.seed,
                                progress=False, train_subset=args.finetune_subset)
        export_checkpoint(str(cell / "best.safetensors"), cell / "model.onnx", card=False)
        rows.append({"artifact": name, "onnx": cell / "model.onnx", "checkpoint": cell / "best.safetensors",
                     "weight_bits": bits, "fine_tune_epochs": epochs})
        log(f"  built {name}")
    if integer_kernels_saturate():  # the other ways to run INT8 here: the fast kernels that saturate, the float graph
        int8 = next(r for r in rows if r["artifact"] == INT8)
        rows.append({**int8, "artifact": SATURATING_INT8, "session_entries": {}})
        rows.append({**int8, "artifact": DEQUANTIZED_INT8, "session_entries": {"session.disable_quant_qdq": "1"}})
    if args.no_peers:
        return _measured(rows, params, test), fp32_ckpt
    calib = Runtime(fp32_onnx).preprocess(train.subset(512, seed=args.seed).images)
    rows.append({"artifact": "onnxruntime quant_pre_process + quantize_static (QDQ, per-channel)",
                 "onnx": _adopt_metadata(_ort_peer(fp32_onnx, work / "ort_static.onnx", calib), fp32_onnx, "onnxruntime quantize_static"),
                 "weight_bits": 8})
    try:
        rows.append({"artifact": "Brevitas 4-bit QCDQ", "onnx": _adopt_metadata(_brevitas_peer(fp32_ckpt, work / "brevitas_4bit.onnx", calib), fp32_onnx, "brevitas 4-bit"),
                     "weight_bits": 4})
    except Exception as e:  # noqa: BLE001 - the peer's failure is a result to report, not a crash
        rows.append({"artifact": "Brevitas 4-bit QCDQ", "onnx": None, "error": f"{type(e).__name__}: {e}"[:300]})
    return _measured(rows, params, test), fp32_ckpt


def _measured(rows: list[dict], params: int, test) -> list[dict]:
    """``rows`` with each file's size, physical minimum, float ops left after optimisation and accuracy."""
    for r in rows:
        if r.get("onnx") is not None:
            r["size_bytes"] = r["onnx"].stat().st_size
            r["min_bytes"] = _min_bytes(params, r["weight_bits"])
            r["float_ops_after_optimization"] = float_compute_ops(r["onnx"])
    _accuracy(rows, test)
    return rows


def _accuracy(rows: list[dict], test) -> None:
    """Artifact AUC on the test split; for qsal artifacts also the PyTorch model's and the argmax agreement."""
    for r in rows:
        if r.get("onnx") is None:
            continue
        deployed = Runtime(r["onnx"])
        if r.get("session_entries") is not None:  # the same file in a session of other options
            deployed.session = _session(r, 0)
        logits = deployed.predict_logits(test.images)
        # what the file runs on here: an integer file whose sums would saturate on this CPU runs its 8-bit layers on
        # onnxruntime's exact u8 x u8 kernels
        entries = r.get("session_entries")
        r["runs_here"] = (DEQUANTIZED_HERE if entries else "integer, saturating (no VNNI)") if entries is not None \
            else U8U8_HERE if deployed.u8u8_kernels else kernels_label(deployed.meta)
        r["test_auc"] = compute_metrics(test.labels, logits, test.info.task, n_bootstrap=0).auc
        if r.get("checkpoint") is not None:
            model, _ = load_checkpoint(str(r["checkpoint"]))
            ref = predict_logits(model, test.tensors()[0])
            r["torch_test_auc"] = compute_metrics(test.labels, ref, test.info.task, n_bootstrap=0).auc
            r["argmax_agreement_vs_torch"] = float(np.mean(ref.argmax(1) == logits.argmax(1)))


def _session(r: dict, threads: int):
    """``r``'s file in the session qsal's Runtime would give it, or where the row has ``session_entries``, in
    onnxruntime's default session with those entries (and the thread count)."""
    import onnxruntime as ort

    if r.get("session_entries") is None:
        return onnx_session(r["onnx"], threads, Runtime(r["onnx"]).meta)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    for key, value in r["session_entries"].items():
        opts.add_session_config_entry(key, value)
    return ort.InferenceSession(str(r["onnx"]), opts, providers=["CPUExecutionProvider"])


def time_artifacts(rows: list[dict], fp32_ckpt: Path, test, threads: int, args) -> dict:
    """{batch: interleaved_latency result} for every ONNX artifact plus PyTorch eager, at ``threads``."""
    torch.set_num_threads(threads or os.cpu_count())
    eager, _ = load_checkpoint(str(fp32_ckpt))
    eager.eval()
    runnable = [r for r in rows if r.get("onnx") is not None]
    x_all = Runtime(runnable[0]["onnx"]).preprocess(test.images[:64])
    # as qsal's Runtime runs each file: exact kernels where this CPU's fast ones would saturate its sums
    sessions = {r["artifact"]: _session(r, threads) for r in runnable}
    out = {}
    for batch, calls_per_round in ((1, args.b1_calls), (64, args.b64_calls)):
        x = np.ascontiguousarray(x_all[:batch])
        xt = torch.from_numpy(x)
        calls = {name: (lambda s=s: s.run(None, {"pixel_values": x})) for name, s in sessions.items()}

        def eager_call():
            with torch.inference_mode():
                eager(xt)

        calls[EAGER] = eager_call
        out[batch] = interleaved_latency(calls, rounds=args.rounds, calls_per_round=calls_per_round)
    return out


COLUMNS = [("artifact", "artifact"), ("size_bytes", "bytes"), ("size_vs_fp32", "size vs FP32"),
           ("size_vs_min", "size vs physical min"), ("b1_ms", "b1 ms"), ("b1_vs_fp32", "b1 speed-up vs FP32"),
           ("b1_vs_int8", "b1 vs INT8"), ("b64_ms", "b64 ms"), ("b64_vs_fp32", "b64 speed-up vs FP32"),
           ("b64_vs_int8", "b64 vs INT8"), ("float_ops", "float ops after ORT optimisation"),
           ("runs_here", "runs here"),
           ("test_auc", "artifact AUC"), ("torch_test_auc", "PyTorch AUC"), ("argmax_agreement_vs_torch", "argmax agreement")]


def _table_rows(rows: list[dict], timing: dict) -> list[dict]:
    by = {r["artifact"]: r for r in rows}
    out = []
    for name in [r["artifact"] for r in rows] + [EAGER]:
        r = by.get(name, {"artifact": name})
        row = {k: r.get(k) for k in ("artifact", "size_bytes", "test_auc", "torch_test_auc",
                                     "argmax_agreement_vs_torch", "runs_here")}
        if r.get("error"):
            row["float_ops"] = f"export failed: {r['error']}"
            out.append(row)
            continue
        if "size_bytes" in r:
            row["size_vs_fp32"] = r["size_bytes"] / by[FP32]["size_bytes"]
            row["size_vs_min"] = r["size_bytes"] / r["min_bytes"]
            row["float_ops"] = ", ".join(f"{k} x{v}" for k, v in sorted(r["float_ops_after_optimization"].items())) or "none"
        for b in (1, 64):
            t = timing[b][name]["median_ms"]
            row[f"b{b}_ms"] = t
            row[f"b{b}_vs_fp32"] = timing[b][FP32]["median_ms"] / t
            row[f"b{b}_vs_int8"] = timing[b][INT8]["median_ms"] / t
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["small_cnn", "resnet18"])
    ap.add_argument("--dataset", default="breastmnist")
    ap.add_argument("--data-dir")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--b1-calls", type=int, default=20, help="batch-1 calls per artifact per round")
    ap.add_argument("--b64-calls", type=int, default=3, help="batch-64 calls per artifact per round")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="intra-op threads; 0 = all cores")
    ap.add_argument("--fp32-epochs", type=int, default=3, help="FP32 training epochs when no cached checkpoint exists")
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--finetune-subset", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(ROOT / "runs" / "latency"))
    ap.add_argument("--out", default=str(RESULTS / "latency"))
    ap.add_argument("--artifacts", nargs="+", choices=[n for n, _, _ in QSAL_VARIANTS],
                    help="qsal artifacts to build and time (default: all; PTQ-INT8 is always timed)")
    ap.add_argument("--no-peers", action="store_true", help="leave out onnxruntime's and Brevitas's quantized files")
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = data_dir(args.data_dir)
    t_start = time.perf_counter()
    networks, text = [], []
    env = environment()
    for model in args.models:
        print(f"[{args.dataset} / {model}] building artifacts", flush=True)
        work = Path(args.work) / f"{args.dataset}_{model}"
        rows, fp32_ckpt = build_artifacts(args.dataset, model, root, work, args, lambda s: print(s, flush=True))
        test = load_splits(args.dataset, root, seed=args.seed)[2]
        entry = {"model": model, "dataset": args.dataset, "artifacts": [], "timing": {}}
        for r in rows:
            entry["artifacts"].append({k: (str(v.relative_to(ROOT)) if isinstance(v, Path) and v.is_relative_to(ROOT)
                                           else str(v) if isinstance(v, Path) else v) for k, v in r.items()})
        for threads in args.threads:
            label = "1 thread" if threads == 1 else f"{threads or os.cpu_count()} threads (all cores)" if threads == 0 else f"{threads} threads"
            print(f"  timing, {label}", flush=True)
            timing = time_artifacts(rows, fp32_ckpt, test, threads, args)
            entry["timing"][label] = {str(b): v for b, v in timing.items()}
            table = markdown_table(_table_rows(rows, timing), COLUMNS)
            text.append(f"## {model}, {args.dataset}, {label}\n\n{table}\n")
            print(text[-1], flush=True)
        networks.append(entry)
    result = {"benchmark": "quantization_latency", "dataset": args.dataset, "rounds": args.rounds,
              "b1_calls_per_round": args.b1_calls, "b64_calls_per_round": args.b64_calls,
              "statistic": "median over rounds of the per-round median call latency (ms)",
              "session": "onnxruntime defaults, CPUExecutionProvider, intra_op_num_threads set, inter_op 1; "
                         "session.x64quantprecision for a file whose integer sums would saturate on this CPU (qsal."
                         "runtime.session_options, as Runtime runs it)",
              "environment": env, "seconds": time.perf_counter() - t_start, "networks": networks,
              "arguments": vars(args), "command": command_line(__file__)}
    out = Path(args.out)
    write_json_atomic(out.with_suffix(".json"), result)
    header = (f"# Deployed-artifact latency and size ({args.dataset}, 28 px)\n\nWritten by `{result['command']}`.\n\nCPU {env['cpu']} ({env['cpu_count']} logical "
              f"cores); onnxruntime {env['versions']['onnxruntime']}, default session options (threads set; "
              "on an x86 CPU without VNNI, session.x64quantprecision for a file whose 8-bit integer sums would "
              "saturate, as qsal runs it: 'runs here' says). "
              f"All artifacts of a network timed in one process in {args.rounds} interleaved rounds ({args.b1_calls} "
              f"batch-1 / {args.b64_calls} batch-64 calls per artifact per round, order rotating); figure = median of "
              f"per-round medians; every call is in {out.with_suffix('.json').name}. Speed-ups are ratios of those medians (>1 = faster). "
              "Size vs physical min: file bytes / (parameters x 4, 1 or 0.5 bytes for FP32, 8-bit, <=4-bit weights). "
              "Float ops: Conv/Gemm/MatMul/Add still in float after onnxruntime's default graph optimisation. "
              "AUC and argmax agreement on the test split (artifact vs its own PyTorch model). Weights are from a "
              "short schedule (latency does not depend on them).\n\n")
    write_text_atomic(out.with_suffix(".md"), header + "\n".join(text))


if __name__ == "__main__":
    main()
