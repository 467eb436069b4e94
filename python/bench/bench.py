"""cnnc.InferenceSession against onnxruntime.InferenceSession from Python.

Each example network is exported to ONNX with `cnnc export`, then both sessions run the
same random input, alternating in rounds (so both see the same machine load); the
median time per call of each is reported. A trivial network (one ReLU on 4 floats)
measures the binding's per-call overhead.

    pip install ./python onnxruntime           # or PYTHONPATH=<dir with cnnc> python ...
    cargo build --release                      # for `cnnc export`
    python python/bench/bench.py [--threads N] [--rounds R] [graphs/x.yaml ...]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import cnnc

REPO = Path(__file__).resolve().parents[2]
NETWORKS = ["digits", "lenet5", "cs231n_example", "vgg_cifar", "resnet_basic_block", "inception3a", "resnet18"]
TRIVIAL = "name: trivial\ninput: [1, 2, 2]\nseed: 0\nlayers:\n  - relu\n"


def per_call(fn, calls):
    """Seconds per call of fn over `calls` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def calls_for(fn, budget=0.05):
    """How many calls take about `budget` seconds."""
    t = per_call(fn, 1)
    return max(1, min(100_000, int(budget / max(t, 1e-7))))


def compare(fns, rounds):
    """Median seconds per call of each fn, run alternately in `rounds` rounds."""
    for fn in fns.values():
        fn()  # warm-up
    counts = {k: calls_for(fn) for k, fn in fns.items()}
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k].append(per_call(fn, counts[k]))
    return {k: statistics.median(v) for k, v in times.items()}


def sessions(onnx_path, threads):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    theirs = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    ours = cnnc.InferenceSession(str(onnx_path), threads=threads)
    return ours, theirs


def fmt_us(s):
    return f"{s * 1e6:,.1f} us" if s < 1e-3 else f"{s * 1e3:,.3f} ms"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("graphs", nargs="*", help="YAML graphs (default: the example networks)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=1)
    a = ap.parse_args()
    cli = os.environ.get("CNNC_BIN", REPO / "target" / "release" / "cnnc")
    graphs = [Path(g) for g in a.graphs] or [REPO / "graphs" / f"{n}.yaml" for n in NETWORKS]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        trivial = Path(tmp) / "trivial.yaml"
        trivial.write_text(TRIVIAL)
        print(f"threads {a.threads}, batch {a.batch}, median of {a.rounds} alternating rounds")
        print(f"{'network':<20} {'cnnc':>12} {'onnxruntime':>12} {'ort/cnnc':>9}")
        for g in [trivial, *graphs]:
            onnx = Path(tmp) / (g.stem + ".onnx")
            subprocess.run([str(cli), "export", str(g), "--output", str(onnx)], check=True, capture_output=True)
            ours, theirs = sessions(onnx, a.threads)
            inp = theirs.get_inputs()[0]
            x = rng.standard_normal((a.batch, *inp.shape[1:]), dtype=np.float32)
            name = ours.get_inputs()[0].name
            y1 = ours.run(None, {name: x})[0]
            y2 = theirs.run(None, {inp.name: x})[0]
            # Time the settled model, as `cnnc bench` does: chunks the compile and first run
            # faulted in on small pages collapsed into huge pages first, untimed.
            cnnc.settle_huge_pages()
            err = float(np.abs(y1 - y2).max() / max(np.abs(y2).max(), 1e-30))
            t = compare(
                {
                    "cnnc": lambda: ours.run(None, {name: x}),
                    "ort": lambda: theirs.run(None, {inp.name: x}),
                },
                a.rounds,
            )
            print(
                f"{g.stem:<20} {fmt_us(t['cnnc']):>12} {fmt_us(t['ort']):>12} {t['ort'] / t['cnnc']:>8.2f}x"
                f"   (max rel diff {err:.1e})"
            )
            if g == trivial:
                model = cnnc.compile(cnnc.load(trivial), threads=1)
                xt = np.ones((1, 1, 2, 2), np.float32)
                tm = compare({"model": lambda: model(xt)}, a.rounds)["model"]
                tn = compare({"noop": lambda: xt.copy()}, a.rounds)["noop"]
                print(f"{'':<20} per-call overhead (trivial network, whole call): model(x) {fmt_us(tm)}, "
                      f"session.run {fmt_us(t['cnnc'])} (x.copy() for scale: {fmt_us(tn)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
