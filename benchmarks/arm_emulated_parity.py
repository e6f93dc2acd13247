"""Do exported artifacts predict the same on aarch64 onnxruntime as on x86? (run under qemu user emulation)

Predictions only: timings under emulation mean nothing and are not recorded.

Setup (Debian, root), once:
    apt-get install qemu-user-static && dpkg --add-architecture arm64 && apt-get update
    apt-get download python3.11-minimal:arm64 libpython3.11-minimal:arm64 libpython3.11-stdlib:arm64 libc6:arm64 \\
        libexpat1:arm64 zlib1g:arm64 libffi8:arm64 libssl3:arm64 libstdc++6:arm64 libgcc-s1:arm64 libbz2-1.0:arm64 \\
        liblzma5:arm64 libsqlite3-0:arm64 libuuid1:arm64 libncursesw6:arm64 libtinfo6:arm64 libcrypt1:arm64
    for d in *.deb; do dpkg -x $d SYSROOT; done
    pip download --no-deps --python-version 3.11 --only-binary=:all: --platform manylinux_2_28_aarch64 \\
        --platform manylinux2014_aarch64 onnxruntime==1.24.1 numpy   # then unzip both wheels into SITE

    python benchmarks/arm_emulated_parity.py --sysroot SYSROOT --site SITE --dataset breastmnist A.onnx B.onnx ...

Versions: onnxruntime 1.32.0's aarch64 library segfaults while loading under Debian 12's qemu 7.2;
1.22.1 loads but has no CPU Cast from INT4; 1.24.1 loads and runs every qsal artifact (use it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, data_dir  # noqa: E402

from qsal._atomic import write_json_atomic  # noqa: E402
from qsal.data import load_split  # noqa: E402
from qsal.runtime import Runtime  # noqa: E402

_ARM_SCRIPT = """
import sys, numpy as np, onnxruntime as ort, platform
assert platform.machine() == "aarch64", platform.machine()
x = np.load(sys.argv[1])
for model, out in zip(sys.argv[2::2], sys.argv[3::2]):
    s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    np.save(out, s.run(["logits"], {"pixel_values": x})[0])
print(ort.__version__)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--sysroot", required=True)
    ap.add_argument("--site", required=True, help="folder with the aarch64 onnxruntime and numpy wheels unpacked")
    ap.add_argument("--dataset", default="breastmnist")
    ap.add_argument("--data-dir")
    ap.add_argument("--out", default=str(RESULTS / "arm_emulated_parity.json"))
    args = ap.parse_args()
    test = load_split(args.dataset, "test", data_dir(args.data_dir))
    x = Runtime(args.models[0]).preprocess(test.images)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "x.npy", x)
        outs = [str(Path(tmp) / f"arm_{i}.npy") for i in range(len(args.models))]
        pairs = [v for m, o in zip(args.models, outs) for v in (str(Path(m).resolve()), o)]
        proc = subprocess.run(["qemu-aarch64-static", "-L", args.sysroot, f"{args.sysroot}/usr/bin/python3.11", "-c",
                               _ARM_SCRIPT, str(Path(tmp) / "x.npy"), *pairs], capture_output=True, text=True,
                              env={"PYTHONPATH": args.site, "OMP_NUM_THREADS": "1"})
        if proc.returncode != 0:
            sys.exit(f"error: aarch64 onnxruntime failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
        arm_version = proc.stdout.strip().splitlines()[-1]
        for model, out in zip(args.models, outs):
            x86 = Runtime(model).run_normalized(x)
            arm = np.load(out)
            rows.append({"model": Path(model).name, "images": len(x), "argmax_agreement": float(np.mean(x86.argmax(1) == arm.argmax(1))),
                         "max_abs_logit_diff": float(np.abs(x86 - arm).max()),
                         "logit_scale": float(np.abs(x86).max())})
            print(json.dumps(rows[-1]))
    import onnxruntime

    write_json_atomic(args.out, {"dataset": args.dataset, "split": "test", "aarch64_onnxruntime": arm_version,
                                 "x86_onnxruntime": onnxruntime.__version__,
                                 "emulator": "qemu-aarch64-static (user mode)", "rows": rows})


if __name__ == "__main__":
    main()
