#!/usr/bin/env python3
"""cnnc against onnxruntime on the example graphs, side by side, in one run.

For each graph: `cnnc export` writes the ONNX model (same seeded weights), onnxruntime
and `cnnc run` compute the same input and the outputs must agree (relative L2 < 1e-4);
then `cnnc bench --json` and onnxruntime are timed alternately, round after round, so
machine drift hits both alike. `cnnc bench` times after settling: chunks of packed
weights and arena faulted in on small pages are collapsed into huge pages after the first
run, untimed (its JSON's `settled_chunks`, `settle_ms`; session 17 on). Compile time is cnnc's `compile_ms` (passes, code
generation, weight packing, one thread) against onnxruntime's one-thread session
creation from the model's bytes, both measured two ways: "first", the first model a fresh
process makes (cnnc: `cnnc bench`; onnxruntime: a new Python process that has imported
onnxruntime and read the file), which pays for cold code, a fresh heap and its page
faults; "warm", the median of later ones in one process (cnnc: `examples/compiletime.rs`
at one and at two threads, onnxruntime: one-thread sessions after a first). Before each
two-thread round of either engine the host's phase is probed (`threadscale phase`), and the
table says which phase each round fell in and, where both engines had rounds in a phase,
their ratio in that phase. Prints one markdown table (paste it into BENCHMARKS.md).

ONNX models (`--onnx a.onnx,b.onnx`) are imported with `cnnc import` instead, and
onnxruntime runs the file itself, both cut before a final Softmax so that the check
compares logits (a saturated softmax would agree whatever came before it). `--isa sse|avx2|avx512` is passed to cnnc.

Usage (from the repo root; creates a virtualenv outside the repo on first use):
    python3 scripts/compare_peers.py [--graphs a,b] [--onnx m.onnx] [--isa avx2]
                                     [--rounds 3] [--seconds 2]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV = Path(os.environ.get("CNNC_PEERS_VENV", Path.home() / ".cache" / "cnnc-peers-venv"))
REPO = Path(os.environ.get("CNNC_REPO", Path(__file__).resolve().parent.parent))
GRAPHS = ["cs231n_example", "lenet5", "digits", "vgg_cifar", "resnet_basic_block",
          "resnet_bottleneck_block", "inception3a", "resnet18"]


def ensure_venv():
    """Re-runs this script inside a virtualenv that has onnxruntime, onnx and numpy."""
    try:
        import numpy  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnx  # noqa: F401
        return
    except ImportError:
        pass
    py = VENV / "bin" / "python"
    if os.environ.get("CNNC_PEERS_BOOTSTRAPPED"):
        sys.exit(f"onnxruntime is still missing in {VENV}")
    if not py.exists():
        print(f"creating {VENV} (onnxruntime, numpy from PyPI)...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "onnxruntime", "onnx", "numpy"], check=True)
    env = dict(os.environ, CNNC_PEERS_BOOTSTRAPPED="1")
    os.execve(str(py), [str(py), *sys.argv], env)


def cnnc(*args, capture=True):
    exe = REPO / "target" / "release" / "cnnc"
    out = subprocess.run([str(exe), *map(str, args)], cwd=REPO, check=True,
                         capture_output=capture, text=True)
    return out.stdout


def rel_l2(a, b):
    import numpy as np
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def ort_session(model, threads):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: the light models' unused shape constants warn
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def without_final_softmax(src, dst):
    """The model cut before a final Softmax, so that the agreement check compares logits:
    with random weights a deep network's softmax saturates to one-hot, which any two
    engines reproduce exactly whatever they computed before it."""
    import onnx
    m = onnx.load(str(src))
    g = m.graph
    last = g.node[-1] if len(g.node) else None
    if last is None or last.op_type != "Softmax" or last.output[0] != g.output[0].name:
        return src
    shape = g.output[0].type
    g.node.remove(last)
    g.output[0].name = last.input[0]
    g.output[0].type.CopyFrom(shape)
    onnx.save(m, str(dst))
    return dst


def ort_creation_ms(model, rounds=3):
    """Median time onnxruntime takes to create a one-thread session from the model's
    bytes already in memory (parsing, graph optimisation, weight prepacking), after a first
    one: what `compile_ms` is to cnnc, which starts from a loaded graph."""
    data = Path(model).read_bytes()
    times = []
    for _ in range(rounds + 1):
        t = time.perf_counter()
        ort_session(data, 1)
        times.append((time.perf_counter() - t) * 1e3)
    return sorted(times[1:])[rounds // 2]


FIRST_SESSION = """
import sys, time
sys.path.insert(0, sys.argv[2])
import compare_peers
import onnxruntime  # noqa: F401  (loading the library is not part of the session)
data = open(sys.argv[1], "rb").read()
t = time.perf_counter()
compare_peers.ort_session(data, 1)
print((time.perf_counter() - t) * 1e3)
"""


def ort_first_session_ms(model):
    """What onnxruntime's first session of a fresh process takes (imported, file read)."""
    out = subprocess.run([sys.executable, "-c", FIRST_SESSION, str(model), str(Path(__file__).parent)],
                         check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def cnnc_warm_compile_ms(graph, threads=1, reps=5):
    """Median of cnnc's compiles repeated in one process (`examples/compiletime.rs`), on
    `threads` threads (code generation and packing use the model's threads). From the
    second on, the functions come from the process's cache of compiled code (Cranelift
    skipped; run with CNNC_CODE_CACHE=0 to compile them every time)."""
    exe = REPO / "target" / "release" / "examples" / "compiletime"
    out = subprocess.run([str(exe), str(graph), "--reps", str(reps), "--threads", str(threads)],
                         check=True, capture_output=True, text=True).stdout
    row = next(line.split() for line in out.splitlines() if line.startswith(Path(graph).stem + " "))
    return float(row[8])  # the total's median


def host_phase():
    """The host's two-thread phase now, 'fast' or 'slow' (`examples/threadscale.rs phase`:
    on a VM whose two vCPUs sometimes sit on one die and sometimes on two, a line one core
    wrote costs the other 2-2.5x as much to read in the second phase, and two-thread times
    differ by up to 1.5x between the phases)."""
    exe = REPO / "target" / "release" / "examples" / "threadscale"
    return subprocess.run([str(exe), "phase"], check=True, capture_output=True,
                          text=True).stdout.split()[-1]


def time_ort(sess, x, seconds):
    name = sess.get_inputs()[0].name
    for _ in range(3):
        sess.run(None, {name: x})
    times, start = [], time.perf_counter()
    while not times or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2] * 1e3


def main():
    ensure_venv()
    import numpy as np
    import onnxruntime as ort

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--graphs", default=",".join(GRAPHS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--onnx", default="", help="ONNX models to import and compare too")
    ap.add_argument("--isa", help="cnnc's --isa (default: the best the host has)")
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "-q"], cwd=REPO, check=True)
    subprocess.run(["cargo", "build", "--release", "-q", "--example", "compiletime",
                    "--example", "threadscale"], cwd=REPO, check=True)
    threads = [1, 2]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        isa = ["--isa", args.isa] if args.isa else []
        inputs = [(g, None) for g in args.graphs.split(",") if g]
        inputs += [(Path(m).stem, Path(m).resolve()) for m in args.onnx.split(",") if m]
        for g, onnx_file in inputs:
            if onnx_file is None:
                graph = REPO / "graphs" / f"{g}.yaml"
                model = tmp / f"{g}.onnx"
                cnnc("export", graph, "-o", model)
            else:
                graph = tmp / f"{g}.yaml"
                model = without_final_softmax(onnx_file, tmp / f"{g}.onnx")
                cnnc("import", model, "-o", graph)
            info = json.loads(cnnc("info", graph, "--json"))
            gflop = 2 * info["total_macs"] / 1e9
            c, h, w = (int(d) for d in info["input"].split("x"))
            x = np.random.default_rng(0).standard_normal((1, c, h, w)).astype(np.float32)
            np.save(tmp / "x.npy", x)
            cnnc("run", graph, *isa, "--input", tmp / "x.npy", "--output", tmp / "y.npy", "--top", "1")
            sessions = {t: ort_session(model, t) for t in threads}
            ref = sessions[1].run(None, {sessions[1].get_inputs()[0].name: x})[0]
            err = rel_l2(np.load(tmp / "y.npy"), ref)
            assert err < 1e-4, f"{g}: cnnc and onnxruntime disagree: relative L2 {err:.2e}"

            ours = {t: [] for t in threads}
            theirs = {t: [] for t in threads}
            # The host's two-thread phase before each two-thread round, per engine.
            phases = {"cnnc": [], "ort": []}
            compile_ms, ort_first = [], []
            for _ in range(args.rounds):
                for t in threads:
                    if t == 2:
                        phases["ort"].append(host_phase())
                    theirs[t].append(time_ort(sessions[t], x, args.seconds))
                    if t == 2:
                        phases["cnnc"].append(host_phase())
                    rep = json.loads(cnnc("bench", graph, *isa, "--threads", t, "--time", args.seconds,
                                          "--json"))
                    ours[t].append(rep["median_ms"])
                    if t == 1:
                        compile_ms.append(rep["compile_ms"])
                        ort_first.append(ort_first_session_ms(model))
            med = lambda v: sorted(v)[len(v) // 2]
            row = {"graph": g, "gflop": gflop, "rel_l2": err,
                   "cnnc_compile": med(compile_ms), "ort_first": med(ort_first),
                   "cnnc_warm": cnnc_warm_compile_ms(graph),
                   "cnnc_warm_2": cnnc_warm_compile_ms(graph, threads=2),
                   "ort_create": ort_creation_ms(model)}
            for t in threads:
                row[f"cnnc_{t}"] = med(ours[t])
                row[f"ort_{t}"] = med(theirs[t])
            row["phases"] = phases
            row["by_phase"] = {}
            for ph in ("fast", "slow"):
                a = [v for v, p in zip(ours[2], phases["cnnc"]) if p == ph]
                b = [v for v, p in zip(theirs[2], phases["ort"]) if p == ph]
                if a and b:
                    row["by_phase"][ph] = med(a) / med(b)
            rows.append(row)
            print(f"{g}: done", file=sys.stderr)

    print(f"onnxruntime {ort.__version__}; cnnc {cnnc('--version').split()[-1]} "
          f"(--isa {args.isa or 'default'}); "
          f"median of {args.rounds} alternating rounds of {args.seconds} s each; batch 1; "
          f"warm: cnnc's later compiles take their functions from the process's code cache "
          f"(Cranelift skipped{'; off here' if os.environ.get('CNNC_CODE_CACHE', '').strip() == '0' else ''})\n")
    print("| network | GFLOP | cnnc 1T (ms) | ORT 1T (ms) | cnnc/ORT 1T | cnnc 2T (ms) | ORT 2T (ms) "
          "| cnnc/ORT 2T | cnnc GFLOP/s 1T | cnnc compile / ORT session, first (ms) "
          "| warm: cnnc 1T, 2T / ORT (ms) "
          "| max rel L2 | 2T phases cnnc / ORT | cnnc/ORT 2T by phase |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['graph']} | {r['gflop']:.4f} | {r['cnnc_1']:.3f} | {r['ort_1']:.3f} | "
              f"{r['cnnc_1'] / r['ort_1']:.2f} | {r['cnnc_2']:.3f} | {r['ort_2']:.3f} | "
              f"{r['cnnc_2'] / r['ort_2']:.2f} | {r['gflop'] / r['cnnc_1'] * 1e3:.1f} | "
              f"{r['cnnc_compile']:.0f} / {r['ort_first']:.0f} | "
              f"{r['cnnc_warm']:.1f}, {r['cnnc_warm_2']:.1f} / {r['ort_create']:.1f} | "
              f"{r['rel_l2']:.1e} | "
              f"{''.join(p[0] for p in r['phases']['cnnc'])} / {''.join(p[0] for p in r['phases']['ort'])} | "
              f"{', '.join(f'{k} {v:.2f}' for k, v in r['by_phase'].items()) or '-'} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
