#!/usr/bin/env python3
"""Regenerate cnnc's golden fixtures with the independent float64 numpy engine.

Run from the repository root:

    /work/venv/bin/python tests/golden/make_golden.py            # self-test + all fixtures
    /work/venv/bin/python tests/golden/make_golden.py --self-test-only
    /work/venv/bin/python tests/golden/make_golden.py lenet5 add3  # only these stems

For every graph in graphs/*.yaml (except resnet18) and tests/golden/micro/*.yaml
this writes a folder next to ... see tests/golden/README.md for the layout.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import zlib

import re

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import refengine as R  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))

SKIP = {"resnet18"}           # too big for a fixture (11.7M parameters)
MAX_BATCH2_ELEMS = 1_000_000  # batch 1 if a batch-2 input would exceed this
# special inputs: stem -> function(rng, shape) -> array
SPECIAL_INPUTS = {
    "maxpool_pad_negative": lambda rng, shp: -np.abs(rng.standard_normal(shp)) - 0.1,
}


# ============================================================================
# self-test: second, differently written implementations + hand examples
# ============================================================================

def _naive_conv(x, w, b, stride, pad):
    """im2col with explicit Python loops, then one matrix product."""
    n, c, h, wd = x.shape
    k, _, kh, kw = w.shape
    sh, sw = stride
    ph, pw = pad
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (wd + 2 * pw - kw) // sw + 1
    out = np.zeros((n, k, ho, wo))
    wmat = w.reshape(k, -1)  # [K, C*kh*kw], (c, u, v) order
    for bi in range(n):
        cols = np.zeros((c * kh * kw, ho * wo))
        for i in range(ho):
            for j in range(wo):
                col = []
                for ci in range(c):
                    for u in range(kh):
                        for v in range(kw):
                            r, s = i * sh + u - ph, j * sw + v - pw
                            inside = 0 <= r < h and 0 <= s < wd
                            col.append(x[bi, ci, r, s] if inside else 0.0)
                cols[:, i * wo + j] = col
        res = wmat @ cols
        if b is not None:
            res += b[:, None]
        out[bi] = res.reshape(k, ho, wo)
    return out


def _naive_pool(x, size, stride, pad, kind):
    n, c, h, wd = x.shape
    kh, kw = size
    sh, sw = stride
    ph, pw = pad
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (wd + 2 * pw - kw) // sw + 1
    out = np.zeros((n, c, ho, wo))
    for bi in range(n):
        for ci in range(c):
            for i in range(ho):
                for j in range(wo):
                    vals = []
                    for u in range(kh):
                        for v in range(kw):
                            r, s = i * sh + u - ph, j * sw + v - pw
                            if 0 <= r < h and 0 <= s < wd:
                                vals.append(x[bi, ci, r, s])
                            elif kind == "avg":
                                vals.append(0.0)  # padding counts as zero
                    if kind == "max":
                        out[bi, ci, i, j] = max(vals)
                    else:
                        out[bi, ci, i, j] = sum(vals) / (kh * kw)
    return out


def self_test():
    rng = np.random.default_rng(1234)
    # conv: taps+einsum vs im2col loops
    conv_cases = [
        # (N, C, H, W, K, kh, kw, sh, sw, ph, pw, bias)
        (2, 3, 15, 15, 4, 7, 7, 2, 2, 3, 3, True),
        (1, 2, 9, 13, 3, 3, 5, 2, 1, 1, 2, True),
        (2, 4, 6, 6, 5, 1, 1, 1, 1, 0, 0, False),
        (1, 3, 8, 7, 2, 3, 3, 3, 2, 0, 1, True),
        (1, 1, 5, 5, 1, 5, 5, 1, 1, 0, 0, True),
        (2, 2, 4, 6, 3, 1, 3, 1, 3, 0, 1, False),
    ]
    for (n, c, h, w, k, kh, kw, sh, sw, ph, pw, bias) in conv_cases:
        x = rng.standard_normal((n, c, h, w))
        wt = rng.standard_normal((k, c, kh, kw))
        b = rng.standard_normal(k) if bias else None
        a = R.conv2d(x, wt, b, (sh, sw), (ph, pw))
        r = _naive_conv(x, wt, b, (sh, sw), (ph, pw))
        assert a.shape == r.shape, (a.shape, r.shape)
        np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12)
    # a third implementation, if scipy (a scikit-learn dependency) is present
    try:
        from scipy.signal import correlate
    except ImportError:
        correlate = None
    if correlate is not None:
        for (n, c, h, w, k, kh, kw, sh, sw, ph, pw, bias) in conv_cases:
            x = rng.standard_normal((n, c, h, w))
            wt = rng.standard_normal((k, c, kh, kw))
            xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
            ref = np.stack([np.stack([correlate(xp[i], wt[j], mode="valid")[0]
                                      for j in range(k)]) for i in range(n)])
            np.testing.assert_allclose(R.conv2d(x, wt, None, (sh, sw), (ph, pw)),
                                       ref[:, :, ::sh, ::sw], rtol=1e-10, atol=1e-10)
    # pools vs scalar loops
    pool_cases = [
        ((2, 3, 7, 7), (3, 3), (2, 2), (1, 1)),
        ((1, 2, 6, 5), (2, 3), (1, 2), (1, 1)),
        ((1, 2, 5, 5), (2, 2), (2, 2), (0, 0)),
        ((2, 1, 4, 4), (2, 4), (2, 3), (1, 2)),
        ((1, 2, 7, 9), (3, 1), (2, 1), (0, 0)),
    ]
    for shp, size, stride, pad in pool_cases:
        x = rng.standard_normal(shp)
        np.testing.assert_allclose(R.maxpool2d(x, size, stride, pad),
                                   _naive_pool(x, size, stride, pad, "max"), atol=0)
        neg = -np.abs(x) - 0.1
        np.testing.assert_allclose(R.maxpool2d(neg, size, stride, pad),
                                   _naive_pool(neg, size, stride, pad, "max"), atol=0)
        np.testing.assert_allclose(R.avgpool2d(x, size, stride, pad),
                                   _naive_pool(x, size, stride, pad, "avg"),
                                   rtol=1e-12, atol=1e-12)
    # the lecture's hand example: 2x2 stride-2 max pool
    x = np.array([[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]],
                 dtype=np.float64)[None, None]
    np.testing.assert_array_equal(R.maxpool2d(x, (2, 2), (2, 2), (0, 0))[0, 0],
                                  [[6, 8], [3, 4]])
    np.testing.assert_array_equal(R.avgpool2d(x, (2, 2), (2, 2), (0, 0))[0, 0],
                                  [[13 / 4, 21 / 4], [8 / 4, 8 / 4]])
    # avgpool with padding counts the padding: ones 2x2, window 2, stride 1, pad 1
    ones = np.ones((1, 1, 2, 2))
    np.testing.assert_allclose(R.avgpool2d(ones, (2, 2), (1, 1), (1, 1))[0, 0],
                               [[.25, .5, .25], [.5, 1, .5], [.25, .5, .25]])
    # maxpool padding is -inf: an all-negative input never yields 0
    assert R.maxpool2d(-ones, (2, 2), (1, 1), (1, 1)).max() == -1
    # conv hand example: 3x3 all-ones filter over a 3x3 ramp with pad 1
    x = np.arange(9, dtype=np.float64).reshape(1, 1, 3, 3)
    y = R.conv2d(x, np.ones((1, 1, 3, 3)), np.array([1.0]), (1, 1), (1, 1))[0, 0]
    np.testing.assert_array_equal(y, [[9, 16, 13], [22, 37, 28], [21, 34, 25]])
    # output size formula
    assert R.out_size(15, 7, 2, 3) == 8 and R.out_size(224, 7, 2, 3) == 112
    assert R.out_size(56, 1, 2, 0) == 28 and R.out_size(112, 3, 2, 1) == 56
    # fc flattens in C,H,W order
    x = np.arange(12, dtype=np.float64).reshape(1, 3, 2, 2)
    w = np.zeros((1, 12))
    w[0, 5] = 1.0  # element c=1, h=0, w=1
    assert R.fc(x, w, None)[0, 0] == x[0, 1, 0, 1]
    # softmax per pixel over channels
    x = rng.standard_normal((2, 4, 3, 3))
    s = R.softmax(x, 1)
    np.testing.assert_allclose(s.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(s[1, :, 2, 0], np.exp(x[1, :, 2, 0]) / np.exp(x[1, :, 2, 0]).sum())
    # batchnorm by hand for one element
    x = rng.standard_normal((1, 2, 2, 2))
    g, bb, m, v = (np.array([2.0, -1.0]), np.array([.5, .1]), np.array([.3, -.2]),
                   np.array([.9, 1.4]))
    y = R.batchnorm(x, g, bb, m, v, 1e-5)
    assert abs(y[0, 1, 1, 0] - ((x[0, 1, 1, 0] + .2) / np.sqrt(1.4 + 1e-5) * -1 + .1)) < 1e-12
    # names after repeat expansion, string/null/{} forms, default inputs
    g = R.load_graph({
        "input": [3, 9, 9],
        "layers": [
            {"repeat": 2, "layers": ["relu", {"repeat": 2, "layers": [
                {"conv": {"filters": 3, "size": 1}}, {"relu": None}]}]},
            {"name": "x", "relu": {}},
            {"name": "cat", "concat": None, "inputs": ["relu1", "conv4", "x"]},
            "softmax",
        ]})
    names = [l.name for l in g.layers]
    assert names == ["relu1", "conv1", "relu2", "conv2", "relu3", "relu4", "conv3",
                     "relu5", "conv4", "relu6", "x", "cat", "softmax1"], names
    assert g.layers[1].inputs == ["relu1"] and g.outputs == ["softmax1"]
    assert g.infer_shapes(2)["cat"] == (2, 9, 9, 9)
    # a named layer still takes an ordinal: [relu, {name: r, relu}, relu] -> relu1 r relu3
    g = R.load_graph({"input": [1, 2, 2], "layers": ["relu", {"name": "r", "relu": None},
                                                     "relu"]})
    assert [l.name for l in g.layers] == ["relu1", "r", "relu3"]
    # the example graphs parse and have the expected shapes
    g = R.load_graph(os.path.join(REPO, "graphs", "resnet18.yaml"))
    shp = g.infer_shapes(1)
    assert shp["maxpool"] == (1, 64, 56, 56) and shp["layer4.1.relu2"] == (1, 512, 7, 7)
    assert shp["fc"] == (1, 1000)
    nparams = sum(int(np.prod(s)) for k, s in g.weight_shapes().items()
                  if not k.endswith(("running_mean", "running_var")))
    assert nparams == 11_689_512, nparams
    g = R.load_graph(os.path.join(REPO, "graphs", "inception3a.yaml"))
    assert g.infer_shapes(1)["concat"] == (1, 256, 28, 28)
    g = R.load_graph(os.path.join(REPO, "graphs", "cs231n_example.yaml"))
    assert g.weight_shapes()["conv1.weight"] == (10, 3, 5, 5)
    print("self-test: OK")


# ============================================================================
# fixtures
# ============================================================================

def f32(a):
    return np.asarray(a, dtype=np.float32)


def dump_json(obj, path):
    """Indented JSON with lists of numbers/short strings kept on one line."""
    text = json.dumps(obj, indent=1)
    text = re.sub(r'\[[^\[\]{}]*\]', lambda m: " ".join(m.group(0).split())
                  .replace("[ ", "[").replace(" ]", "]"), text)
    with open(path, "w") as f:
        f.write(text + "\n")


def bf16_round(a):
    """Round to the nearest bfloat16-representable value (kept as f32): the low 16
    mantissa bits become zero, which roughly halves the fixtures' size in git."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def stem_seed(stem):
    return zlib.crc32(stem.encode())  # stable per fixture, independent of the others


def make_fixture(yaml_path, out_dir):
    stem = os.path.splitext(os.path.basename(yaml_path))[0]
    g = R.load_graph(yaml_path)
    rng = np.random.default_rng(stem_seed(stem))
    per_image = int(np.prod(g.input_shape))
    batch = 1 if 2 * per_image > MAX_BATCH2_ELEMS else 2
    weights = g.random_weights(rng)
    shp = (batch,) + g.input_shape
    x = SPECIAL_INPUTS.get(stem, lambda r, s: r.standard_normal(s))(rng, shp)
    # round weights (to bf16-representable values) and the input (to f32) first,
    # so the only error left for an f32 implementation is its own arithmetic
    weights = {k: bf16_round(v) for k, v in weights.items()}
    x = f32(x)
    outs = g.forward(x.astype(np.float64), weights)
    outs32 = g.forward(x, weights, dtype=np.float32)

    os.makedirs(out_dir, exist_ok=True)
    for old in glob.glob(os.path.join(out_dir, "output*.npy")):
        os.remove(old)
    R.save_weights_f32(weights, os.path.join(out_dir, "weights.safetensors"))
    np.save(os.path.join(out_dir, "input.npy"), np.ascontiguousarray(x))
    out_meta = []
    for i, (name, y) in enumerate(outs.items()):
        fname = "output.npy" if i == 0 else f"output_{i}.npy"
        np.save(os.path.join(out_dir, fname), np.ascontiguousarray(f32(y)))
        err = float(np.max(np.abs(outs32[name].astype(np.float64) - y)))
        out_meta.append({
            "name": name, "file": fname, "shape": list(y.shape),
            "max_abs": float(np.max(np.abs(y))),
            "numpy_f32_max_abs_err": err,
        })
    meta = {
        "graph": os.path.relpath(yaml_path, REPO),
        "batch": batch,
        "input_shape": list(shp),
        "outputs": out_meta,
        "layer_shapes": {k: list(v) for k, v in g.infer_shapes(batch).items()},
        "weights": {k: list(v.shape) for k, v in weights.items()},
        "rng_seed": stem_seed(stem),
        "input_kind": "-|N(0,1)|-0.1" if stem in SPECIAL_INPUTS else "N(0,1)",
    }
    dump_json(meta, os.path.join(out_dir, "meta.json"))
    size = sum(os.path.getsize(p) for p in glob.glob(os.path.join(out_dir, "*")))
    print(f"{os.path.relpath(out_dir, REPO):45s} batch {batch}  "
          f"out {out_meta[0]['shape']}  max|y| {out_meta[0]['max_abs']:.3g}  "
          f"f32 err {max(o['numpy_f32_max_abs_err'] for o in out_meta):.2g}  "
          f"{size / 1e6:.2f} MB")
    return meta


def verify_fixture(yaml_path, out_dir):
    """Re-read a fixture from disk and recompute: catches file-format slips."""
    with open(os.path.join(out_dir, "meta.json")) as f:
        meta = json.load(f)
    g = R.load_graph(yaml_path)
    w = R.load_weights(os.path.join(out_dir, "weights.safetensors"))
    assert set(w) == set(g.weight_shapes()), "weights file names != graph's tensors"
    x = np.load(os.path.join(out_dir, "input.npy"))
    assert x.dtype == np.dtype("<f4") and x.flags.c_contiguous
    outs = g.forward(x, w)
    for o, (name, y) in zip(meta["outputs"], outs.items()):
        ref = np.load(os.path.join(out_dir, o["file"]))
        assert ref.dtype == np.dtype("<f4") and o["name"] == name
        assert ref.shape == y.shape, (ref.shape, y.shape)
        np.testing.assert_array_equal(ref, y.astype(np.float32))


def all_graphs():
    items = []
    for p in sorted(glob.glob(os.path.join(REPO, "graphs", "*.yaml"))):
        stem = os.path.splitext(os.path.basename(p))[0]
        if stem in SKIP or stem == "digits":   # digits has real weights: see examples/digits
            continue
        items.append((stem, p, os.path.join(HERE, stem)))
    for p in sorted(glob.glob(os.path.join(HERE, "micro", "*.yaml"))):
        stem = os.path.splitext(os.path.basename(p))[0]
        items.append((stem, p, os.path.join(HERE, "micro", stem)))
    return items


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stems", nargs="*", help="only regenerate these fixtures")
    ap.add_argument("--self-test-only", action="store_true")
    args = ap.parse_args()
    self_test()
    if args.self_test_only:
        return
    manifest = {}
    mpath = os.path.join(HERE, "manifest.json")
    if args.stems and os.path.exists(mpath):
        with open(mpath) as f:
            manifest = json.load(f)
    for stem, yaml_path, out_dir in all_graphs():
        if args.stems and stem not in args.stems:
            continue
        meta = make_fixture(yaml_path, out_dir)
        verify_fixture(yaml_path, out_dir)
        manifest[stem] = {"dir": os.path.relpath(out_dir, REPO), "graph": meta["graph"],
                          "batch": meta["batch"],
                          "outputs": [o["file"] for o in meta["outputs"]]}
    dump_json(dict(sorted(manifest.items())), mpath)
    if not args.stems:
        write_shapes_only("resnet18")


def write_shapes_only(stem):
    """For graphs too big for a fixture: per-layer output shapes (batch 1) and
    weight shapes only."""
    g = R.load_graph(os.path.join(REPO, "graphs", stem + ".yaml"))
    ws = g.weight_shapes()
    meta = {
        "graph": f"graphs/{stem}.yaml",
        "parameters": sum(int(np.prod(s)) for k, s in ws.items()
                          if not k.endswith(("running_mean", "running_var"))),
        "layer_shapes": {k: list(v) for k, v in g.infer_shapes(1).items()},
        "weights": {k: list(v) for k, v in ws.items()},
    }
    dump_json(meta, os.path.join(HERE, f"{stem}_shapes.json"))
    print(f"tests/golden/{stem}_shapes.json: {meta['parameters']} parameters")


if __name__ == "__main__":
    main()
