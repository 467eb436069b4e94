#!/usr/bin/env python3
"""ONNX golden fixtures: onnxruntime's outputs for cnnc's exports, and a hand-built model.

For each small example graph (graphs/*.yaml except the big ones, and the micro graphs
of tests/golden/micro/), this exports the graph with `cnnc export` and the golden
weights of tests/golden/<stem>/, checks the model with onnx's checker, runs
onnxruntime on a fixed batch-2 input and writes tests/golden/onnx/<stem>/input.npy and
output.npy (output_1.npy, ... for further outputs).

It also builds `handbuilt/model.onnx` with the onnx helper API the way an exporter
would (PyTorch-style names, asymmetric pads, auto_pad, ceil_mode, Gemm with transB
and alpha/beta, a Constant + Reshape flatten, MatMul + Add, initializers as raw data
and as typed fields) and writes onnxruntime's output for it.

Run from the repository root with a venv outside the repo:
    python3 -m venv /work/venv && /work/venv/bin/pip install numpy onnx onnxruntime
    /work/venv/bin/python tests/golden/make_onnx_fixtures.py [stem ...]
"""
import json
import os
import subprocess
import sys
import tempfile
import zlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "golden", "onnx")
BATCH = 2

# (stem, graph, weights): the example graphs small enough to keep as fixtures
# (resnet18, resnet_*_block and inception3a have activations of megabytes).
CASES = [
    ("cs231n_example", "graphs/cs231n_example.yaml", "tests/golden/cs231n_example/weights.safetensors"),
    ("lenet5", "graphs/lenet5.yaml", "tests/golden/lenet5/weights.safetensors"),
    ("vgg_cifar", "graphs/vgg_cifar.yaml", "tests/golden/vgg_cifar/weights.safetensors"),
    ("digits", "graphs/digits.yaml", None),
] + [
    (stem, f"tests/golden/micro/{stem}.yaml", f"tests/golden/micro/{stem}/weights.safetensors")
    for stem in sorted(
        f[:-5] for f in os.listdir(os.path.join(ROOT, "tests/golden/micro")) if f.endswith(".yaml")
    )
]


def rng_for(stem):
    return np.random.default_rng(zlib.crc32(stem.encode()))


def run_ort(path, x):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def save_case(stem, x, outputs):
    d = os.path.join(OUT, stem)
    os.makedirs(d, exist_ok=True)
    np.save(os.path.join(d, "input.npy"), x)
    files = []
    for i, y in enumerate(outputs):
        name = "output.npy" if i == 0 else f"output_{i}.npy"
        np.save(os.path.join(d, name), y.astype(np.float32))
        files.append(name)
    return files


def export(graph, weights, path):
    cmd = ["cargo", "run", "--release", "--quiet", "--", "export", graph, "-o", path]
    if weights:
        cmd[-2:-2] = ["--weights", weights]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


def handbuilt():
    """A small CNN as an exporter writes it (cnnc did not write this one)."""
    rng = np.random.default_rng(7)

    def w(*shape, scale=None):
        fan_in = np.prod(shape[1:]) if len(shape) > 1 else 1
        s = scale if scale is not None else np.sqrt(2.0 / fan_in)
        return (rng.standard_normal(shape) * s).astype(np.float32)

    inits = []

    def raw(name, a):  # raw_data, as numpy_helper writes it
        inits.append(numpy_helper.from_array(a, name))
        return name

    def typed(name, a):  # float_data, as older exporters write it
        inits.append(helper.make_tensor(name, TensorProto.FLOAT, a.shape, a.flatten().tolist()))
        return name

    n = helper.make_node
    nodes = [
        # 3x12x12 -> 8x6x6: stride 2 with TF-style "SAME" pads, all on the bottom/right.
        n("Conv", ["image", raw("conv1.weight", w(8, 3, 3, 3)), typed("conv1.bias", w(8, scale=0.1))],
          ["/conv1/Conv_output_0"], name="/conv1/Conv", kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
        n("BatchNormalization",
          ["/conv1/Conv_output_0", raw("bn1.weight", rng.uniform(0.5, 1.5, 8).astype(np.float32)),
           raw("bn1.bias", w(8, scale=0.1)), raw("bn1.running_mean", w(8, scale=0.3)),
           raw("bn1.running_var", rng.uniform(0.5, 1.5, 8).astype(np.float32))],
          ["/bn1/BatchNormalization_output_0"], name="/bn1/BatchNormalization", epsilon=1e-3),
        n("Relu", ["/bn1/BatchNormalization_output_0"], ["/relu/Relu_output_0"], name="/relu/Relu"),
        n("Conv", ["/relu/Relu_output_0", raw("conv2.weight", w(8, 8, 3, 3))], ["/conv2/Conv_output_0"],
          name="/conv2/Conv", kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
        n("Add", ["/conv2/Conv_output_0", "/relu/Relu_output_0"], ["/Add_output_0"], name="/Add"),
        n("Identity", ["/Add_output_0"], ["/Identity_output_0"], name="/Identity"),
        # 8x6x6 -> 8x4x4 with ceil_mode: (6 + 2 - 3)/2 + 1 = 3.5, rounded up.
        n("MaxPool", ["/Identity_output_0"], ["/pool/MaxPool_output_0"], name="/pool/MaxPool",
          kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        n("Conv", ["/pool/MaxPool_output_0", typed("branch.conv3.weight", w(4, 8, 1, 1)),
                   raw("branch.conv3.bias", w(4, scale=0.1))],
          ["/branch/conv3/Conv_output_0"], name="/branch/conv3/Conv", kernel_shape=[1, 1]),
        n("AveragePool", ["/pool/MaxPool_output_0"], ["/branch/AveragePool_output_0"], name="/branch/AveragePool",
          kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=1),
        n("Concat", ["/branch/conv3/Conv_output_0", "/branch/AveragePool_output_0"], ["/Concat_output_0"],
          name="/Concat", axis=1),
        n("Dropout", ["/Concat_output_0"], ["/dropout/Dropout_output_0"], name="/dropout/Dropout"),
        n("Constant", [], ["/Constant_output_0"], name="/Constant",
          value=numpy_helper.from_array(np.array([-1, 12 * 4 * 4], dtype=np.int64))),
        n("Reshape", ["/dropout/Dropout_output_0", "/Constant_output_0"], ["/Reshape_output_0"], name="/Reshape"),
        n("Gemm", ["/Reshape_output_0", typed("fc1.weight", w(16, 192)), raw("fc1.bias", w(16, scale=0.1))],
          ["/fc1/Gemm_output_0"], name="/fc1/Gemm", alpha=0.5, beta=2.0, transB=1),
        n("Relu", ["/fc1/Gemm_output_0"], ["/relu_1/Relu_output_0"], name="/relu_1/Relu"),
        n("MatMul", ["/relu_1/Relu_output_0", raw("onnx::MatMul_42", w(16, 5))], ["/fc2/MatMul_output_0"],
          name="/fc2/MatMul"),
        n("Add", ["/fc2/MatMul_output_0", raw("fc2.bias", w(5, scale=0.1))], ["/fc2/Add_output_0"],
          name="/fc2/Add"),
        n("Softmax", ["/fc2/Add_output_0"], ["probs"], name="/Softmax"),
    ]
    graph = helper.make_graph(
        nodes, "main_graph",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch_size", 3, 12, 12])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch_size", 5])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="pytorch", producer_version="2.1.0")
    model.ir_version = 7
    onnx.checker.check_model(model, full_check=True)
    return model


def zoo_models():
    """Two small networks of the model zoo's ops with random weights (the zoo files'
    weights are all 0.02, which cannot tell channels apart): `zoo_alexnet_inception`
    (grouped conv, LRN, batchnorm followed by Mul and Add of Unsqueezed per-channel
    constants, max and average pools with unequal pads that do not count the padding,
    a weight made by Reshape of a constant, Gemm; opset 11) and `zoo_shuffle_mobile`
    (grouped 1x1 conv, the Reshape/Transpose/Reshape channel shuffle, depthwise convs
    with channel multiplier 1 and 2, Clip(0, 6) as ReLU6, a dilated conv, an average
    pool excluding its padding, Sum and Concat, GlobalAveragePool; opset 13)."""
    rng = np.random.default_rng(16)

    def w(*shape, scale=None):
        fan_in = np.prod(shape[1:]) if len(shape) > 1 else 1
        s = scale if scale is not None else np.sqrt(2.0 / fan_in)
        return (rng.standard_normal(shape) * s).astype(np.float32)

    def pos(*shape):
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)

    n = helper.make_node
    models = {}

    inits = []

    def init(name, a):
        inits.append(numpy_helper.from_array(a, name))
        return name

    nodes = [
        n("Conv", ["x", init("c1.w", w(8, 3, 3, 3)), init("c1.b", w(8, scale=0.1))], ["c1"],
          name="c1", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        n("Relu", ["c1"], ["r1"], name="r1"),
        n("LRN", ["r1"], ["n1"], name="n1", size=5, alpha=0.0005, beta=0.75, bias=2.0),
        n("MaxPool", ["n1"], ["p1"], name="p1", kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
        # AlexNet's two-GPU conv: group 2.
        n("Conv", ["p1", init("c2.w", w(12, 4, 3, 3)), init("c2.b", w(12, scale=0.1))], ["c2"],
          name="c2", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2),
        n("BatchNormalization", ["c2", init("bn.s", pos(12)), init("bn.b", w(12, scale=0.1)),
                                 init("bn.m", w(12, scale=0.3)), init("bn.v", pos(12))], ["bn"], name="bn"),
        n("Unsqueeze", [init("sc.w", pos(12))], ["sc.w3"], name="sc.w.unsq", axes=[1, 2]),
        n("Mul", ["bn", "sc.w3"], ["sc.m"], name="sc.mul"),
        n("Unsqueeze", [init("sc.b", w(12, scale=0.1))], ["sc.b3"], name="sc.b.unsq", axes=[1, 2]),
        n("Add", ["sc.m", "sc.b3"], ["sc"], name="sc.add"),
        n("Relu", ["sc"], ["r2"], name="r2"),
        n("LRN", ["r2"], ["n2"], name="n2", size=3, alpha=0.0001, beta=0.75),
        n("AveragePool", ["n2"], ["p2"], name="p2", kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1]),
        n("Reshape", [init("fc.w5", w(10, 108, 1)),
                      init("fc.shape", np.array([10, 108], dtype=np.int64))], ["fc.w"], name="fc.w.reshape"),
        n("Flatten", ["p2"], ["flat"], name="flat", axis=1),
        n("Gemm", ["flat", "fc.w", init("fc.b", w(10, scale=0.1))], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "zoo_alexnet_inception",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 23, 23])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    m.ir_version = 7
    models["zoo_alexnet_inception"] = (m, [3, 23, 23])

    inits = []
    c = 12
    nodes = [
        n("Conv", ["x", init("g1.w", w(c, 2, 1, 1))], ["g1"], name="g1", kernel_shape=[1, 1], group=3),
        n("Relu", ["g1"], ["g1r"], name="g1r"),
        n("Reshape", ["g1r", init("sh1", np.array([0, 3, 4, 9, 9], dtype=np.int64))], ["s5"], name="shuffle.split"),
        n("Transpose", ["s5"], ["s5t"], name="shuffle.swap", perm=[0, 2, 1, 3, 4]),
        n("Reshape", ["s5t", init("sh2", np.array([0, c, 9, 9], dtype=np.int64))], ["s"], name="shuffle"),
        # Depthwise, channel multiplier 2, stride 2, then ReLU6.
        n("Conv", ["s", init("dw.w", w(2 * c, 1, 3, 3)), init("dw.b", w(2 * c, scale=0.1))], ["dw"], name="dw",
          kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], group=c),
        n("Clip", ["dw", init("lo", np.array(0, dtype=np.float32)), init("hi", np.array(6, dtype=np.float32))],
          ["dwc"], name="relu6"),
        # Dilated 3x3 (extent 5), padded to keep the size.
        n("Conv", ["dwc", init("dl.w", w(2 * c, 2 * c, 3, 3))], ["dl"], name="dilated",
          kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2]),
        n("Conv", ["dwc", init("dw2.w", w(2 * c, 1, 3, 3))], ["dw2"], name="dw2",
          kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=2 * c),
        n("Sum", ["dl", "dw2"], ["sum"], name="sum"),
        n("AveragePool", ["dwc"], ["ap"], name="ap", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        n("Concat", ["sum", "ap"], ["cat"], name="cat", axis=1),
        n("GlobalAveragePool", ["cat"], ["gap"], name="gap"),
    ]
    graph = helper.make_graph(
        nodes, "zoo_shuffle_mobile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 9, 9])],
        [helper.make_tensor_value_info("gap", TensorProto.FLOAT, ["N", 4 * c, 1, 1])], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 7
    models["zoo_shuffle_mobile"] = (m, [6, 9, 9])
    for m, _ in models.values():
        onnx.checker.check_model(m, full_check=True)
    return models


def main(only):
    manifest_path = os.path.join(OUT, "manifest.json")
    manifest = json.load(open(manifest_path))["cases"] if os.path.exists(manifest_path) else {}
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for stem, graph, weights in CASES:
            if only and stem not in only:
                continue
            path = os.path.join(tmp, stem + ".onnx")
            export(graph, weights, path)
            model = onnx.load(path)
            onnx.checker.check_model(model, full_check=True)
            dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
            x = rng_for(stem).standard_normal([BATCH] + dims).astype(np.float32)
            if stem == "maxpool_pad_negative":  # max pool padding must lose to any value
                x = -np.abs(x) - np.float32(0.1)
            outputs = run_ort(path, x)
            files = save_case(stem, x, outputs)
            manifest[stem] = {"dir": f"tests/golden/onnx/{stem}", "graph": graph, "weights": weights,
                              "batch": BATCH, "outputs": files}
            print(f"{stem}: {[o.shape for o in outputs]}")
    if not only or "handbuilt" in only:
        model = handbuilt()
        d = os.path.join(OUT, "handbuilt")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "model.onnx")
        onnx.save(model, path)
        x = rng_for("handbuilt").standard_normal([BATCH, 3, 12, 12]).astype(np.float32)
        files = save_case("handbuilt", x, run_ort(path, x))
        manifest["handbuilt"] = {"dir": "tests/golden/onnx/handbuilt", "model": "tests/golden/onnx/handbuilt/model.onnx",
                                 "batch": BATCH, "outputs": files}
        print("handbuilt: ok")
    for stem, (model, dims) in zoo_models().items():
        if only and stem not in only:
            continue
        d = os.path.join(OUT, stem)
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, "model.onnx")
        onnx.save(model, path)
        x = rng_for(stem).standard_normal([BATCH] + dims).astype(np.float32)
        files = save_case(stem, x, run_ort(path, x))
        manifest[stem] = {"dir": f"tests/golden/onnx/{stem}", "model": f"tests/golden/onnx/{stem}/model.onnx",
                          "batch": BATCH, "outputs": files}
        print(f"{stem}: ok")
    manifest = dict(sorted(manifest.items()))
    with open(manifest_path, "w") as f:
        json.dump({"onnxruntime": ort.__version__, "onnx": onnx.__version__, "cases": manifest}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(set(sys.argv[1:]))
