#!/usr/bin/env python3
"""Where cnnc loses (or wins) time against onnxruntime, layer by layer.

For a graph (graphs/NAME.yaml, exported to ONNX as compare_peers.py does) or an ONNX model
(imported with `cnnc import`, both cut before a final Softmax), in alternating rounds:
onnxruntime runs the model with profiling on (its JSON trace has one event per node and
run) and `cnnc run --profile` prints its per-layer medians, at each thread count. Prints,
per thread count, one table per cnnc layer sorted by the absolute gap: cnnc ms, onnxruntime
ms, their ratio, the gap and the cumulative share of the total gap; then the same summed
per kind of layer (the op column without its epilogue).

Matching the two engines' layers: both fuse (conv+batchnorm+relu, +add), and each names
a fused node differently (cnnc after the conv; onnxruntime after the chain's last node or
its output tensor, plus suffixes such as `_nchwc`). So every node of the original ONNX
graph is given an owner: the cnnc layer of the same name, else (a node cnnc fused or
folded) the owner of its producer, preferring the input no other node reads (an Add fused
into the residual branch's conv, not the skip connection's). An onnxruntime node is
charged to the owner of the nearest node of its own op type at or above the original node
or tensor its name starts with; nodes onnxruntime inserted itself (layout reorders) get
rows of their own, marked `(ORT)`.

Usage (from the repo root, with a Python that has onnxruntime, onnx and numpy, e.g.
/work/venv/bin/python; CNNC_REPO=path runs another checkout's target/release/cnnc):
    python3 scripts/layer_compare.py resnet18 [--threads 1,2] [--rounds 3] [--runs 20]
    python3 scripts/layer_compare.py /path/to/model.onnx --top 15 [--isa avx2]
"""
import argparse
import json
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_peers as peers  # noqa: E402  (its venv bootstrap, cnnc runner, ORT session)


def median(v):
    v = sorted(v)
    return v[len(v) // 2] if v else 0.0


def cnnc_profile(graph, threads, isa, x_file):
    """`cnnc run --profile`: {layer: (op, ms)} (each the median of 5 runs)."""
    out = peers.cnnc("run", graph, "--threads", threads, *isa, "--input", x_file, "--profile")
    layers, in_table = {}, False
    for line in out.splitlines():
        if line.startswith("layer "):
            in_table = True
        elif line.startswith("total:"):
            in_table = False
        elif in_table and line.strip():
            tok = line.split()
            layers[tok[0]] = (" ".join(tok[1:-3]), float(tok[-3]))
    return layers


def ort_profile(model, threads, runs, tmp):
    """{(node name, index): [ms per run]} from onnxruntime's profiling trace, warm-up runs
    dropped, and {(node name, index): op type} (names are not unique: `ReorderOutput`)."""
    import onnxruntime as ort
    import numpy as np
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / f"ort_{threads}")
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    x = np.load(tmp / "x.npy")
    warmup = 3
    for _ in range(warmup + runs):
        sess.run(None, {sess.get_inputs()[0].name: x})
    trace = json.loads(Path(sess.end_profiling()).read_text())
    times, ops = defaultdict(list), {}
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = (e["name"][: -len("_kernel_time")], e["args"].get("node_index"))
            times[node].append(e["dur"] / 1e3)
            ops[node] = e["args"].get("op_name", "?")
    return {n: t[warmup:] for n, t in times.items()}, ops


class Graph:
    """The original ONNX graph, for charging both engines' (fused) nodes to cnnc's layers."""

    def __init__(self, model, cnnc_layers):
        import onnx
        self.nodes = list(onnx.load(str(model), load_external_data=False).graph.node)
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.readers = defaultdict(int)
        for n in self.nodes:
            for i in n.input:
                self.readers[i] += 1
        self.named = {n.name: n for n in self.nodes}
        self.cnnc_layers = cnnc_layers
        self.memo = {}

    def inputs(self, n):
        """The nodes n reads from, those whose output nobody else reads first (the residual
        branch of an Add, not the skip connection)."""
        fed = sorted((i for i in n.input if i in self.producer), key=lambda i: self.readers[i] != 1)
        return [self.producer[i] for i in fed]

    def owner(self, n):
        """The cnnc layer that computes node n: the layer of its name, else (a node cnnc fused
        or folded) its producer's; None for nodes on constants only."""
        if n.name not in self.memo:
            self.memo[n.name] = n.name if n.name in self.cnnc_layers else None
            for p in self.inputs(n) if self.memo[n.name] is None else []:
                self.memo[n.name] = self.owner(p)
                if self.memo[n.name]:
                    break
        return self.memo[n.name]

    def ort_owner(self, name, op):
        """The cnnc layer an onnxruntime node's time is charged to. onnxruntime names a fused
        node after a member of the chain or after its output tensor, plus suffixes (`_nchwc`),
        so: the original node or tensor its name starts with (cut one `_` at a time), then the
        nearest node of the same op type at or above it."""
        cand = name
        while cand not in self.named and cand not in self.producer and "_" in cand:
            cand = cand.rsplit("_", 1)[0]
        node = self.named.get(cand) or self.producer.get(cand)
        if node is None:
            return f"(ORT) {op}"
        same_op = node
        while same_op is not None and same_op.op_type != op.replace("Fused", ""):
            same_op = (self.inputs(same_op) or [None])[0]
        return self.owner(same_op or node) or f"(folded) {cand}"


def compare(cnnc_rounds, ort_times, ort_ops, graph):
    """Rows {layer, op, cnnc, ort} per cnnc layer (medians), plus onnxruntime-only rows."""
    rows = {}
    for layer in cnnc_rounds[0]:
        op = cnnc_rounds[0][layer][0]
        rows[layer] = {"layer": layer, "op": op, "ort": 0.0, "ort_nodes": 0,
                       "cnnc": median([r[layer][1] for r in cnnc_rounds if layer in r])}
    for node, t in ort_times.items():
        key = graph.ort_owner(node[0], ort_ops[node])
        row = rows.setdefault(key, {"layer": key, "op": ort_ops[node], "cnnc": 0.0, "ort": 0.0,
                                    "ort_nodes": 0})
        row["ort"] += median(t)
        row["ort_nodes"] += 1
    return list(rows.values())


def kind(op):
    """A layer's kind: its op without the epilogue flags (+relu, +residual, ...)."""
    return re.sub(r" \+\w+", "", op)


def print_table(title, rows, key, top):
    total_gap = sum(r["cnnc"] - r["ort"] for r in rows)
    c_total, o_total = sum(r["cnnc"] for r in rows), sum(r["ort"] for r in rows)
    print(f"\n{title}: cnnc {c_total:.3f} ms, onnxruntime {o_total:.3f} ms (sums of per-layer "
          f"medians), ratio {c_total / max(o_total, 1e-9):.2f}, gap {total_gap:+.3f} ms\n")
    print(f"| {key} | cnnc ms | ORT ms | cnnc/ORT | gap ms | cum. share of gap |")
    print("|---|---|---|---|---|---|")
    cum = 0.0
    for r in sorted(rows, key=lambda r: -abs(r["cnnc"] - r["ort"]))[:top]:
        gap = r["cnnc"] - r["ort"]
        cum += gap
        ratio = f"{r['cnnc'] / r['ort']:.2f}" if r["ort"] > 0 and r["cnnc"] > 0 else "-"
        share = f"{100 * cum / total_gap:.0f}%" if abs(total_gap) > 1e-9 else "-"
        print(f"| {r['label']} | {r['cnnc']:.3f} | {r['ort']:.3f} | {ratio} | {gap:+.3f} | {share} |")


def by_kind(rows):
    kinds = {}
    for r in rows:
        k = kinds.setdefault(kind(r["op"]), {"label": "", "op": kind(r["op"]), "cnnc": 0.0,
                                             "ort": 0.0, "n": 0})
        k["cnnc"] += r["cnnc"]
        k["ort"] += r["ort"]
        k["n"] += r["ort_nodes"] if r["layer"].startswith("(ORT)") else 1
    for k in kinds.values():
        k["label"] = f"{k['n']} x {k['op']}"
    return list(kinds.values())


def prepare(target, tmp):
    """(cnnc graph, ONNX model) for a graph name or an ONNX file."""
    if target.endswith(".onnx"):
        model = peers.without_final_softmax(Path(target).resolve(), tmp / "model.onnx")
        graph = tmp / "model.yaml"
        peers.cnnc("import", model, "-o", graph)
        return graph, model
    graph = peers.REPO / "graphs" / f"{target}.yaml"
    model = tmp / f"{target}.onnx"
    peers.cnnc("export", graph, "-o", model)
    return graph, model


def main():
    peers.ensure_venv()
    import numpy as np
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("target", help="a graph name in graphs/ or an ONNX file")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of both engines")
    ap.add_argument("--runs", type=int, default=20, help="onnxruntime runs per round")
    ap.add_argument("--top", type=int, default=12, help="rows per table")
    ap.add_argument("--isa", help="cnnc's --isa")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    isa = ["--isa", args.isa] if args.isa else []
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        graph, model = prepare(args.target, tmp)
        info = json.loads(peers.cnnc("info", graph, "--json"))
        c, h, w = (int(d) for d in info["input"].split("x"))
        np.save(tmp / "x.npy", np.random.default_rng(0).standard_normal((1, c, h, w)).astype(np.float32))
        for t in (int(s) for s in args.threads.split(",")):
            cnnc_rounds, ort_times, ort_ops = [], defaultdict(list), {}
            for _ in range(args.rounds):
                times, ops = ort_profile(model, t, args.runs, tmp)
                for n, v in times.items():
                    ort_times[n] += v
                ort_ops.update(ops)
                cnnc_rounds.append(cnnc_profile(graph, t, isa, tmp / "x.npy"))
            rows = compare(cnnc_rounds, ort_times, ort_ops, Graph(model, cnnc_rounds[0]))
            for r in rows:
                r["label"] = r["layer"] if r["layer"].startswith("(") else f"{r['layer']}: {r['op']}"
            name = Path(args.target).stem
            print_table(f"{name}, {t} thread(s), per layer", rows, "layer", args.top)
            print_table(f"{name}, {t} thread(s), per kind", by_kind(rows), "kind", args.top)
            out[t] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
