#!/usr/bin/env python3
"""Train a small LeNet-style CNN on scikit-learn's 8x8 handwritten digits, in numpy.

    /work/venv/bin/python examples/digits/train.py        (from the repository root)

Network (input 1x8x8, pixels scaled to [0, 1] by dividing by 16):
    conv1 8@3x3 pad 1 -> relu -> conv2 16@3x3 pad 1 -> relu -> maxpool 2x2
    -> fc1 64 -> relu -> fc2 10 -> softmax
Writes graphs/digits.yaml, graphs/digits.safetensors and, in examples/digits/,
test_images.npy, test_labels.npy, test_predictions.npy, test_probs.npy and
digit_<label>_idx<i>.png (one correctly classified test image per class).
Finally re-runs graphs/digits.yaml through the golden reference engine
(tests/golden/refengine.py) and checks it predicts the same classes.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "golden"))
import refengine as R  # noqa: E402

SEED = 0
TEST_SIZE = 0.25          # stratified split, random_state=SEED -> 1347 train / 450 test
EPOCHS = 30
BATCH = 32
LR = 2e-3
C1, C2, HIDDEN = 8, 16, 64

YAML = """\
# A small LeNet-style CNN for scikit-learn's 8x8 handwritten digits (UCI optical
# recognition of handwritten digits, CC BY 4.0). Trained by examples/digits/train.py;
# pixels are the data set's 0..16 values divided by 16, i.e. in [0, 1].
name: digits
input: {{shape: [1, 8, 8], mean: [0.0], std: [1.0]}}
weights: digits.safetensors
seed: 0
layers:
  - conv: {{filters: {c1}, size: 3, pad: 1}}     # {c1}x8x8
  - relu
  - conv: {{filters: {c2}, size: 3, pad: 1}}    # {c2}x8x8
  - relu
  - maxpool: {{size: 2}}                 # {c2}x4x4
  - fc: {{units: {hidden}}}
  - relu
  - fc: {{units: 10}}
  - softmax
"""


# ----------------------------------------------------------------------------
# layers with backward passes (3x3 pad 1 stride 1 conv, 2x2 max pool)
# ----------------------------------------------------------------------------

def conv_fwd(x, w, b):
    """x [N,C,H,W], w [K,C,3,3] -> out [N,K,H,W]; cache = padded taps."""
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cols = np.stack([xp[:, :, u:u + h, v:v + wd] for u in range(3) for v in range(3)],
                    axis=2)  # [N, C, 9, H, W]
    out = np.einsum("kct,ncthw->nkhw", w.reshape(w.shape[0], c, 9), cols,
                    optimize=True) + b[None, :, None, None]
    return out, cols


def conv_bwd(dout, cols, w):
    n, c, _, h, wd = cols.shape
    k = w.shape[0]
    dw = np.einsum("nkhw,ncthw->kct", dout, cols, optimize=True).reshape(w.shape)
    db = dout.sum(axis=(0, 2, 3))
    dcols = np.einsum("kct,nkhw->ncthw", w.reshape(k, c, 9), dout, optimize=True)
    dxp = np.zeros((n, c, h + 2, wd + 2), dtype=dout.dtype)
    for t in range(9):
        u, v = divmod(t, 3)
        dxp[:, :, u:u + h, v:v + wd] += dcols[:, :, t]
    return dxp[:, :, 1:-1, 1:-1], dw, db


def pool_fwd(x):
    n, c, h, w = x.shape
    win = x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    win = win.reshape(n, c, h // 2, w // 2, 4)
    idx = win.argmax(axis=-1)
    return np.take_along_axis(win, idx[..., None], -1)[..., 0], (idx, x.shape)


def pool_bwd(dout, cache):
    idx, shp = cache
    n, c, h, w = shp
    dwin = np.zeros(dout.shape + (4,), dtype=dout.dtype)
    np.put_along_axis(dwin, idx[..., None], dout[..., None], -1)
    dwin = dwin.reshape(n, c, h // 2, w // 2, 2, 2).transpose(0, 1, 2, 4, 3, 5)
    return dwin.reshape(shp)


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def forward(p, x, train=False):
    h1, c1 = conv_fwd(x, p["conv1.weight"], p["conv1.bias"])
    a1 = np.maximum(h1, 0)
    h2, c2 = conv_fwd(a1, p["conv2.weight"], p["conv2.bias"])
    a2 = np.maximum(h2, 0)
    m, pc = pool_fwd(a2)
    f = m.reshape(m.shape[0], -1)            # C,H,W order
    h3 = f @ p["fc1.weight"].T + p["fc1.bias"]
    a3 = np.maximum(h3, 0)
    z = a3 @ p["fc2.weight"].T + p["fc2.bias"]
    probs = softmax(z)
    if not train:
        return probs
    return probs, (x, c1, h1, a1, c2, h2, pc, m, f, h3, a3)


def backward(p, probs, y, cache):
    x, c1, h1, a1, c2, h2, pc, m, f, h3, a3 = cache
    n = y.shape[0]
    dz = probs.copy()
    dz[np.arange(n), y] -= 1.0
    dz /= n                                   # mean cross-entropy
    g = {}
    g["fc2.weight"] = dz.T @ a3
    g["fc2.bias"] = dz.sum(0)
    da3 = dz @ p["fc2.weight"]
    dh3 = da3 * (h3 > 0)
    g["fc1.weight"] = dh3.T @ f
    g["fc1.bias"] = dh3.sum(0)
    dm = (dh3 @ p["fc1.weight"]).reshape(m.shape)
    da2 = pool_bwd(dm, pc)
    dh2 = da2 * (h2 > 0)
    da1, g["conv2.weight"], g["conv2.bias"] = conv_bwd(dh2, c2, p["conv2.weight"])
    dh1 = da1 * (h1 > 0)
    _, g["conv1.weight"], g["conv1.bias"] = conv_bwd(dh1, c1, p["conv1.weight"])
    return g


def init_params(rng):
    def he(shape, fan_in):
        return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    return {
        "conv1.weight": he((C1, 1, 3, 3), 9), "conv1.bias": np.zeros(C1),
        "conv2.weight": he((C2, C1, 3, 3), C1 * 9), "conv2.bias": np.zeros(C2),
        "fc1.weight": he((HIDDEN, C2 * 16), C2 * 16), "fc1.bias": np.zeros(HIDDEN),
        "fc2.weight": he((10, HIDDEN), HIDDEN) * 0.5, "fc2.bias": np.zeros(10),
    }


def grad_check(rng):
    """Finite-difference check of the backward pass on a tiny batch."""
    p = init_params(rng)
    for k in p:
        if k.endswith("bias"):
            p[k] = rng.standard_normal(p[k].shape) * 0.1
    x = rng.random((3, 1, 8, 8))
    y = np.array([1, 4, 7])

    def loss(pp):
        return -np.log(forward(pp, x)[np.arange(3), y]).mean()
    probs, cache = forward(p, x, train=True)
    g = backward(p, probs, y, cache)
    for k in p:
        for _ in range(4):
            i = tuple(rng.integers(0, s) for s in p[k].shape)
            old = p[k][i]
            p[k][i] = old + 1e-6
            lp = loss(p)
            p[k][i] = old - 1e-6
            lm = loss(p)
            p[k][i] = old
            num = (lp - lm) / 2e-6
            assert abs(num - g[k][i]) <= 1e-6 + 1e-4 * abs(num), (k, i, num, g[k][i])
    print("gradient check: OK")


# ----------------------------------------------------------------------------

def main():
    t0 = time.time()
    rng = np.random.default_rng(SEED)
    grad_check(np.random.default_rng(123))

    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)[:, None]     # [1797, 1, 8, 8], exactly pixel/16
    y = d.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=TEST_SIZE, random_state=SEED, stratify=y)
    tr, te = np.sort(tr), np.sort(te)                      # keep the data set's order
    Xtr, ytr, Xte, yte = X[tr].astype(np.float64), y[tr], X[te], y[te]
    print(f"train {len(tr)}  test {len(te)}")

    p = init_params(rng)
    mom = {k: np.zeros_like(v) for k, v in p.items()}
    vel = {k: np.zeros_like(v) for k, v in p.items()}
    b1, b2, step = 0.9, 0.999, 0
    for epoch in range(EPOCHS):
        order = rng.permutation(len(tr))
        lr = LR * (0.5 * (1 + np.cos(np.pi * epoch / EPOCHS)))   # cosine decay
        tot = 0.0
        for s in range(0, len(order), BATCH):
            bi = order[s:s + BATCH]
            probs, cache = forward(p, Xtr[bi], train=True)
            tot += -np.log(probs[np.arange(len(bi)), ytr[bi]] + 1e-12).sum()
            g = backward(p, probs, ytr[bi], cache)
            step += 1
            for k in p:
                mom[k] = b1 * mom[k] + (1 - b1) * g[k]
                vel[k] = b2 * vel[k] + (1 - b2) * g[k] ** 2
                mhat = mom[k] / (1 - b1 ** step)
                vhat = vel[k] / (1 - b2 ** step)
                p[k] -= lr * mhat / (np.sqrt(vhat) + 1e-8)
        if epoch % 5 == 4 or epoch == EPOCHS - 1:
            tr_acc = (forward(p, Xtr).argmax(1) == ytr).mean()
            print(f"epoch {epoch + 1:3d}  loss {tot / len(tr):.4f}  train acc {tr_acc:.4f}"
                  f"  ({time.time() - t0:.0f}s)")

    # ---- save weights (f32) and the graph
    gdir = os.path.join(REPO, "graphs")
    wpath = os.path.join(gdir, "digits.safetensors")
    R.save_weights_f32(p, wpath)
    with open(os.path.join(gdir, "digits.yaml"), "w") as f:
        f.write(YAML.format(c1=C1, c2=C2, hidden=HIDDEN))

    # ---- the script's own forward pass, from the saved f32 weights, in f32
    from safetensors.numpy import load_file
    p32 = load_file(wpath)
    probs = forward(p32, Xte).astype(np.float32)
    assert probs.dtype == np.float32
    pred = probs.argmax(1).astype(np.int64)
    acc = float((pred == yte).mean())
    print(f"test accuracy {acc:.4f} ({int((pred == yte).sum())}/{len(yte)})")
    assert acc >= 0.95, "accuracy below 95%"

    np.save(os.path.join(HERE, "test_images.npy"), np.ascontiguousarray(Xte, np.float32))
    np.save(os.path.join(HERE, "test_labels.npy"), yte.astype(np.int64))
    np.save(os.path.join(HERE, "test_predictions.npy"), pred)
    np.save(os.path.join(HERE, "test_probs.npy"), np.ascontiguousarray(probs))

    # ---- one correctly classified PNG per class (8-bit grey = round(pixel/16*255))
    for old in os.listdir(HERE):
        if old.startswith("digit_") and old.endswith(".png"):
            os.remove(os.path.join(HERE, old))
    pngs = []
    for cls in range(10):
        i = int(np.flatnonzero((yte == cls) & (pred == cls))[0])
        raw = d.images[te[i]]                                  # 0..16
        img = np.round(raw / 16.0 * 255.0).astype(np.uint8)
        name = f"digit_{cls}_idx{i}.png"
        Image.fromarray(img, mode="L").save(os.path.join(HERE, name))
        pngs.append((name, cls, i))

    # ---- cross-check with the golden reference engine (float64)
    g = R.load_graph(os.path.join(gdir, "digits.yaml"))
    w = R.load_weights(R.graph_weights_path(g))
    ref = g.forward(Xte, w)[g.outputs[0]]
    ref_pred = ref.argmax(1)
    assert np.array_equal(ref_pred, pred), "reference engine disagrees"
    print(f"reference engine: same predictions, max |prob diff| "
          f"{np.abs(ref - probs).max():.2e}")
    for name, cls, i in pngs:
        png = np.asarray(Image.open(os.path.join(HERE, name)), dtype=np.float64) / 255.0
        assert png.shape == (8, 8)
        out = g.forward(png[None, None], w)[g.outputs[0]]
        assert out.argmax() == cls == pred[i], (name, out.argmax())
    print(f"reference engine: all {len(pngs)} PNGs (decoded as value/255) classified "
          "correctly")
    print(f"done in {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
