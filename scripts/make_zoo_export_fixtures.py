#!/usr/bin/env python3
"""onnxruntime fixtures for cnnc's ONNX export of the model zoo's ops.

For each graph tests/golden/zoo_export/<stem>.yaml (grouped, depthwise and dilated
convs, LRN, clip, channel shuffle, scale_shift, batchnorm, pools with asymmetric pads
and averages that exclude the padding) this exports the graph with `cnnc export` (its
seeded weights), replaces the per-channel parameters the seed leaves trivial (biases
zero, scale_shift and batchnorm the identity) by random ones, checks the model with
onnx's checker, runs onnxruntime on a fixed batch-2 input and writes
tests/golden/zoo_export/<stem>/{model.onnx,input.npy,output.npy}.
tests/zoo_export.rs then checks, without Python, that cnnc imports each model, matches
onnxruntime on both engines, and exports it again to the same nodes.

Run from the repository root with a venv outside the repo:
    /work/venv/bin/python scripts/make_zoo_export_fixtures.py
"""
import glob
import os
import subprocess
import tempfile
import zlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DIR = os.path.join(ROOT, "tests", "golden", "zoo_export")
BATCH = 2


def randomise(model, rng):
    """Random per-channel parameters: biases, scale_shift's, batchnorm's."""
    for init in model.graph.initializer:
        a = numpy_helper.to_array(init)
        per_channel = a.ndim == 1 or (a.ndim == 3 and a.shape[1:] == (1, 1))
        if a.dtype != np.float32 or not per_channel or a.size <= 1:
            continue
        if init.name.endswith("running_var"):
            v = rng.uniform(0.5, 2.0, a.shape)
        else:
            v = rng.standard_normal(a.shape)
        init.CopyFrom(numpy_helper.from_array(v.astype(np.float32), init.name))


def main():
    with tempfile.TemporaryDirectory() as tmp:
        for graph in sorted(glob.glob(os.path.join(DIR, "*.yaml"))):
            stem = os.path.basename(graph)[:-5]
            path = os.path.join(tmp, stem + ".onnx")
            subprocess.run(
                ["cargo", "run", "--release", "--quiet", "--", "export", graph, "-o", path],
                cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            model = onnx.load(path)
            rng = np.random.default_rng(zlib.crc32(stem.encode()))
            randomise(model, rng)
            onnx.checker.check_model(model, full_check=True)
            out = os.path.join(DIR, stem)
            os.makedirs(out, exist_ok=True)
            onnx.save(model, os.path.join(out, "model.onnx"))
            dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
            x = rng.standard_normal([BATCH] + dims).astype(np.float32)
            sess = ort.InferenceSession(os.path.join(out, "model.onnx"), providers=["CPUExecutionProvider"])
            (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
            np.save(os.path.join(out, "input.npy"), x)
            np.save(os.path.join(out, "output.npy"), y.astype(np.float32))
            print(f"{stem}: {[n.op_type for n in model.graph.node]} -> {y.shape}")


if __name__ == "__main__":
    main()
