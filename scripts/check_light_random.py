#!/usr/bin/env python3
"""Checks the ONNX model zoo's nine light networks with random weights against
onnxruntime.

The stored outputs of tests/golden/light/ are weak: every weight of those files is
0.02, so all channels are alike and a mis-wired network can still match. This script
makes a random-weight copy of each model (every ConstantOfShape weight, and the
batchnorm statistics, replaced by random initializers of the same shape: conv and fc
weights He-normal, biases and shifts N(0, 0.1^2), batchnorm scales U(0.5, 1.5),
variances U(0.5, 1.5)), runs onnxruntime on a random input, then `cnnc import` and
`cnnc run` on both engines, and reports the relative L2 error of each (pass: < 1e-4).

The networks end in a softmax over 1000 classes, which random weights saturate: the
output is one-hot and equal on every engine however wrong the logits are (ResNet-50 and
ShuffleNet gave an error of exactly 0). So the final Softmax is cut off and the
logits are compared, and a check whose reference is degenerate (its values nearly all
equal) fails instead of passing.

Run from the repository root (needs numpy, onnx, onnxruntime; builds cnnc with cargo,
or set CNNC to a built binary):
    /work/venv/bin/python scripts/check_light_random.py [stem ...] [--keep DIR]
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

ort.set_default_logger_severity(3)  # not the unused-initializer warnings
from onnx import numpy_helper

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
LIGHT = os.path.join(ROOT, "tests", "golden", "light")
STEMS = ["bvlc_alexnet", "zfnet512", "vgg19", "inception_v1", "inception_v2",
         "resnet50", "squeezenet", "densenet121", "shufflenet"]


def random_weights(model, rng):
    """The model with every ConstantOfShape output (its weights) replaced by a random
    initializer of that shape, and the batchnorm statistics made random too."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    role = {}  # value name -> how to draw it
    for n in g.node:
        if n.op_type in ("Conv", "Gemm", "MatMul"):
            role.setdefault(n.input[1], "weight")
            if len(n.input) > 2 and n.input[2]:
                role.setdefault(n.input[2], "bias")
        elif n.op_type == "BatchNormalization":
            for name, r in zip(n.input[1:], ["scale", "bias", "mean", "var"]):
                role[name] = r
    # Shapes flow through Reshape/Unsqueeze of weights: draw at the ConstantOfShape.
    consumers = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def role_of(name, depth=0):
        if name in role or depth > 3:
            return role.get(name, "shift")
        for c in consumers.get(name, []):
            if c.op_type in ("Reshape", "Unsqueeze", "Squeeze", "Identity"):
                return role_of(c.output[0], depth + 1)
            if c.op_type == "Mul":
                return "scale"
        return "shift"

    def draw(shape, r):
        shape = tuple(int(d) for d in shape)
        if r == "weight":
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
            return rng.normal(0, np.sqrt(2.0 / max(fan_in, 1)), shape)
        if r in ("scale", "var"):
            return rng.uniform(0.5, 1.5, shape)
        if r == "mean":
            return rng.normal(0, 0.3, shape)
        return rng.normal(0, 0.1, shape)

    nodes = []
    for n in g.node:
        if n.op_type == "ConstantOfShape":
            shape = numpy_helper.to_array(inits[n.input[0]])
            value = draw(shape, role_of(n.output[0])).astype(np.float32)
            g.initializer.append(numpy_helper.from_array(value, n.output[0]))
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    for t in list(g.initializer):
        if role.get(t.name) in ("scale", "bias", "mean", "var") and t.data_type == 1:
            value = draw(t.dims, role[t.name]).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(value, t.name))
    return model


def cut_final_softmax(model):
    """The model without its last node when that is a Softmax: its output is the logits."""
    g = model.graph
    last = g.node[-1]
    if last.op_type != "Softmax" or g.output[0].name != last.output[0]:
        return model
    logits = last.input[0]
    del g.node[-1]
    out = g.output[0]
    out.name = logits
    return model


def cnnc(*args):
    binary = os.environ.get("CNNC")
    cmd = [binary] if binary else ["cargo", "run", "--release", "--quiet", "--"]
    subprocess.run(cmd + list(args), cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def rel_l2(a, b):
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-30))


def check(stem, work):
    rng = np.random.default_rng(sum(map(ord, stem)))
    model = random_weights(onnx.load(os.path.join(LIGHT, f"light_{stem}.onnx")), rng)
    model = cut_final_softmax(model)
    path = os.path.join(work, f"{stem}.onnx")
    onnx.save(model, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    want = sess.run(None, {inp.name: x})[0]
    # A reference whose values are nearly all equal cannot tell a right network from
    # a wrong one.
    spread = float(np.std(want) / max(np.abs(want).max(), 1e-30))
    x_path = os.path.join(work, f"{stem}_input.npy")
    np.save(x_path, x)
    yaml = os.path.join(work, f"{stem}.yaml")
    cnnc("import", path, "-o", yaml)
    errors = {}
    for engine in ["jit", "interp"]:
        out = os.path.join(work, f"{stem}_{engine}.npy")
        cnnc("run", yaml, "--engine", engine, "--input", x_path, "--output", out, "--top", "0")
        got = np.load(out).reshape(want.shape)
        errors[engine] = rel_l2(got, want)
    return errors, spread


def main():
    args = sys.argv[1:]
    keep = None
    if "--keep" in args:
        i = args.index("--keep")
        keep = args[i + 1]
        del args[i:i + 2]
    stems = args or STEMS
    work = keep or tempfile.mkdtemp(prefix="cnnc-light-random-")
    os.makedirs(work, exist_ok=True)
    failed = 0
    for stem in stems:
        e, spread = check(stem, work)
        ok = all(v < 1e-4 for v in e.values()) and spread > 1e-3
        failed += not ok
        print(f"{stem:14s} jit {e['jit']:.2e}  interp {e['interp']:.2e}  "
              f"logit spread {spread:.2f}  {'ok' if ok else 'FAIL'}", flush=True)
    print(f"{len(stems) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
