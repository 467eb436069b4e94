#!/usr/bin/env python3
"""Summarise criterion results (target/criterion) as markdown tables for BENCHMARKS.md.

Usage, after `cargo bench`: python3 scripts/bench_table.py
"""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "target" / "criterion"


def results():
    """{group: {bench id: (median seconds, elements per iteration or None)}}"""
    out = {}
    for est in ROOT.glob("**/new/estimates.json"):
        bench = json.loads((est.parent / "benchmark.json").read_text())
        median = json.loads(est.read_text())["median"]["point_estimate"] / 1e9
        tp = bench.get("throughput") or {}
        elements = tp.get("Elements") or tp.get("Bytes")
        group = bench["group_id"]
        ident = "/".join(x for x in (bench.get("function_id"), bench.get("value_str")) if x)
        out.setdefault(group, {})[ident] = (median, elements)
    return out


def fmt_time(s):
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms"


def main():
    res = results()
    nets = {k: v for k, v in res.items() if k.startswith("network")}
    print("### Networks (median; GFLOP/s in parentheses)\n")
    print("| network | batch | interpreter | JIT -O0 1T | JIT -O2 1T | JIT -O2 all threads | JIT -O2 1T vs interpreter |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in sorted(nets.items()):
        net = name.split("/", 1)[1]
        batches = sorted({int(k.rsplit("/", 1)[1]) for k in rows})
        for b in batches:
            get = lambda prefix: next(((t, e) for k, (t, e) in rows.items()
                                       if k.startswith(prefix) and k.endswith(f"/{b}")), None)
            cell = lambda r: "-" if r is None else (
                fmt_time(r[0]) + (f" ({r[1] / r[0] / 1e9:.1f})" if r[1] else ""))
            interp, o0, o2 = get("interp/"), get("jit-O0/"), get("jit-O2/")
            threads = get("jit-O2-threads")
            ratio = f"{interp[0] / o2[0]:.0f}x" if interp and o2 else "-"
            print(f"| {net} | {b} | {cell(interp)} | {cell(o0)} | {cell(o2)} | {cell(threads)} | {ratio} |")
    for group in sorted(res):
        if group.startswith("network"):
            continue
        print(f"\n### {group}\n")
        print("| bench | median | GFLOP/s (or G elem/s) |")
        print("|---|---|---|")
        for ident, (t, e) in sorted(res[group].items()):
            rate = f"{e / t / 1e9:.2f}" if e else "-"
            print(f"| {ident} | {fmt_time(t)} | {rate} |")


if __name__ == "__main__":
    main()
