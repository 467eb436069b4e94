"""Independent float64 numpy reference engine for cnnc's YAML graph format.

This is deliberately written from the format description alone (not from the
Rust code) so that it can serve as an oracle.  Everything is computed in
float64, tensors are NCHW with a batch dimension, fc/flatten outputs are [N, F].

Public API:
    g = load_graph(path_or_dict)          -> Graph (parsed, names resolved)
    shapes = g.infer_shapes(batch)        -> {layer name: shape tuple}
    w = g.random_weights(rng)             -> {tensor name: float64 array}
    outs = g.forward(x, weights)          -> {output name: float64 array}
    w = load_weights(path)                -> {tensor name: float64 array}
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import yaml

# op -> allowed config keys (None: anything goes)
OPS = {
    "conv": {"filters", "size", "stride", "pad", "bias"},
    "relu": set(), "maxpool": {"size", "stride", "pad"},
    "avgpool": {"size", "stride", "pad"}, "global_avgpool": set(),
    "fc": {"units", "bias"}, "flatten": set(), "softmax": set(), "add": set(),
    "concat": set(), "batchnorm": {"eps"}, "dropout": None,
}
REQUIRED = {"conv": ("filters", "size"), "maxpool": ("size",), "avgpool": ("size",),
            "fc": ("units",)}


class GraphError(Exception):
    pass


# ----------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------

def pair(v, what="value"):
    """An int or [h, w] -> (h, w)."""
    if isinstance(v, bool):
        raise GraphError(f"{what}: expected int or [h, w], got {v!r}")
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(
            isinstance(e, int) and not isinstance(e, bool) for e in v):
        return (int(v[0]), int(v[1]))
    raise GraphError(f"{what}: expected int or [h, w], got {v!r}")


def out_size(n, f, s, p):
    """floor((N + 2P - F) / S) + 1, as in PyTorch."""
    return (n + 2 * p - f) // s + 1


# ----------------------------------------------------------------------------
# primitive ops (float64 numpy)
# ----------------------------------------------------------------------------

def _pad(x, ph, pw, value):
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode="constant",
                  constant_values=value)


def _taps(xp, kh, kw, sh, sw, ho, wo):
    """Yield (u, v, slice) where slice[n, c, i, j] = xp[n, c, i*sh+u, j*sw+v]."""
    for u in range(kh):
        for v in range(kw):
            yield u, v, xp[:, :, u:u + sh * (ho - 1) + 1:sh, v:v + sw * (wo - 1) + 1:sw]


def conv2d(x, w, b, stride, pad):
    """x [N,C,H,W], w [K,C,Fh,Fw], b [K] or None. Loop over filter taps."""
    n, c, h, wd = x.shape
    k, c2, kh, kw = w.shape
    if c != c2:
        raise GraphError(f"conv: input has {c} channels, weight expects {c2}")
    sh, sw = stride
    ph, pw = pad
    ho, wo = out_size(h, kh, sh, ph), out_size(wd, kw, sw, pw)
    if ho < 1 or wo < 1:
        raise GraphError("conv: empty output")
    xp = _pad(x, ph, pw, 0.0)
    out = np.zeros((n, k, ho, wo), dtype=x.dtype)
    for u, v, xs in _taps(xp, kh, kw, sh, sw, ho, wo):
        # [K, C] x [N, C, Ho, Wo] -> [N, K, Ho, Wo]
        out += np.einsum("kc,nchw->nkhw", w[:, :, u, v], xs, optimize=True)
    if b is not None:
        out += b[None, :, None, None]
    return out


def maxpool2d(x, size, stride, pad):
    kh, kw = size
    sh, sw = stride
    ph, pw = pad
    n, c, h, wd = x.shape
    ho, wo = out_size(h, kh, sh, ph), out_size(wd, kw, sw, pw)
    if ho < 1 or wo < 1:
        raise GraphError("maxpool: empty output")
    xp = _pad(x, ph, pw, -np.inf)
    out = np.full((n, c, ho, wo), -np.inf, dtype=x.dtype)
    for _, _, xs in _taps(xp, kh, kw, sh, sw, ho, wo):
        out = np.maximum(out, xs)
    return out


def avgpool2d(x, size, stride, pad):
    """Divides by the full window kh*kw; padding counts as zeros
    (PyTorch count_include_pad=True)."""
    kh, kw = size
    sh, sw = stride
    ph, pw = pad
    n, c, h, wd = x.shape
    ho, wo = out_size(h, kh, sh, ph), out_size(wd, kw, sw, pw)
    if ho < 1 or wo < 1:
        raise GraphError("avgpool: empty output")
    xp = _pad(x, ph, pw, 0.0)
    out = np.zeros((n, c, ho, wo), dtype=x.dtype)
    for _, _, xs in _taps(xp, kh, kw, sh, sw, ho, wo):
        out += xs
    return out / (kh * kw)


def softmax(x, axis=1):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def batchnorm(x, weight, bias, mean, var, eps):
    shp = (1, -1) + (1,) * (x.ndim - 2)
    return ((x - mean.reshape(shp)) / np.sqrt(var.reshape(shp) + eps)
            * weight.reshape(shp) + bias.reshape(shp))


def fc(x, w, b):
    x2 = x.reshape(x.shape[0], -1)  # C,H,W order (C-order reshape of NCHW)
    y = x2 @ w.T
    if b is not None:
        y = y + b[None, :]
    return y


# ----------------------------------------------------------------------------
# graph parsing
# ----------------------------------------------------------------------------

class Layer:
    def __init__(self, op, cfg, name, inputs, explicit_name, explicit_inputs):
        self.op = op
        self.cfg = cfg
        self.name = name
        self.inputs = inputs
        self.explicit_name = explicit_name
        self.explicit_inputs = explicit_inputs

    def __repr__(self):
        return f"Layer({self.name}: {self.op} {self.cfg} <- {self.inputs})"


def _expand(items, where="layers"):
    """Expand `repeat` blocks (nested allowed) into a flat list of raw layers."""
    if not isinstance(items, list):
        raise GraphError(f"{where}: expected a list")
    out = []
    for it in items:
        if isinstance(it, dict) and "repeat" in it:
            extra = set(it) - {"repeat", "layers"}
            if extra:
                raise GraphError(f"repeat block: unexpected keys {sorted(extra)}")
            n = it["repeat"]
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise GraphError(f"repeat: count must be a non-negative int, got {n!r}")
            body = _expand(it.get("layers"), "repeat.layers")
            for _ in range(n):
                out.extend(body)
        else:
            out.append(it)
    return out


def _split_layer(raw):
    """raw layer -> (op, cfg dict, name or None, inputs or None)."""
    if isinstance(raw, str):
        op, cfg, name, inputs = raw, {}, None, None
    elif isinstance(raw, dict):
        name = raw.get("name")
        inputs = raw.get("inputs")
        ops = [k for k in raw if k not in ("name", "inputs")]
        if len(ops) != 1:
            raise GraphError(f"layer {raw!r}: expected exactly one op key, got {ops}")
        op = ops[0]
        cfg = raw[op]
        if cfg is None:
            cfg = {}
        if op == "dropout" and not isinstance(cfg, dict):
            cfg = {"p": cfg}
        if not isinstance(cfg, dict):
            raise GraphError(f"layer {raw!r}: op config must be a map")
        if name is not None and not isinstance(name, str):
            raise GraphError(f"layer {raw!r}: name must be a string")
        if inputs is not None:
            if isinstance(inputs, str):
                inputs = [inputs]
            if not isinstance(inputs, list) or not all(isinstance(s, str) for s in inputs):
                raise GraphError(f"layer {raw!r}: inputs must be a list of names")
    else:
        raise GraphError(f"layer {raw!r}: expected a string or a map")
    if op not in OPS:
        raise GraphError(f"unknown op {op!r}")
    if OPS[op] is not None and set(cfg) - OPS[op]:
        raise GraphError(f"{op}: unknown config keys {sorted(set(cfg) - OPS[op])}")
    for k in REQUIRED.get(op, ()):
        if k not in cfg:
            raise GraphError(f"{op}: missing {k!r}")
    return op, dict(cfg), name, inputs


class Graph:
    def __init__(self, spec, base_dir="."):
        if not isinstance(spec, dict):
            raise GraphError("graph: expected a map at top level")
        self.spec = spec
        self.base_dir = base_dir
        self.name = spec.get("name")
        inp = spec.get("input")
        if isinstance(inp, dict):
            self.input_shape = tuple(int(v) for v in inp["shape"])
            self.mean = inp.get("mean")
            self.std = inp.get("std")
        else:
            self.input_shape = tuple(int(v) for v in inp)
            self.mean = self.std = None
        if len(self.input_shape) != 3:
            raise GraphError("input: expected [C, H, W]")
        self.weights_path = spec.get("weights")
        self.seed = spec.get("seed")
        self.strict_shapes = spec.get("strict_shapes", False)

        raws = _expand(spec.get("layers"))
        if not raws:
            raise GraphError("graph has no layers")
        counters = {}
        self.layers = []
        names = {"input"}
        prev = "input"
        for raw in raws:
            op, cfg, name, inputs = _split_layer(raw)
            # k = 1-based ordinal among ALL layers of this op (named or not)
            counters[op] = counters.get(op, 0) + 1
            explicit_name = name is not None
            if name is None:
                name = f"{op}{counters[op]}"
            if name in names:
                raise GraphError(f"duplicate layer name {name!r}")
            explicit_inputs = inputs is not None
            if inputs is None:
                inputs = [prev]
            for i in inputs:
                if i not in names:
                    raise GraphError(f"layer {name!r}: unknown input {i!r} "
                                     "(inputs must refer to earlier layers)")
            names.add(name)
            self.layers.append(Layer(op, cfg, name, list(inputs), explicit_name,
                                     explicit_inputs))
            prev = name
        outs = spec.get("outputs")
        if outs is None:
            outs = [self.layers[-1].name]
        for o in outs:
            if o not in names:
                raise GraphError(f"unknown output {o!r}")
        self.outputs = list(outs)
        self._check_arity()

    def _check_arity(self):
        for l in self.layers:
            n = len(l.inputs)
            if l.op in ("add", "concat"):
                if n < 2:
                    raise GraphError(f"{l.name}: {l.op} needs 2+ inputs")
            elif n != 1:
                raise GraphError(f"{l.name}: {l.op} takes exactly one input")

    # ------------------------------------------------------------------
    # shape inference and weight shapes
    # ------------------------------------------------------------------

    def infer_shapes(self, batch=1):
        """Returns an OrderedDict name -> shape (with batch dim)."""
        shapes = OrderedDict(input=(batch,) + self.input_shape)
        for l in self.layers:
            ins = [shapes[i] for i in l.inputs]
            shapes[l.name] = self._out_shape(l, ins)
        return shapes

    def _out_shape(self, l, ins):
        c = l.cfg
        x = ins[0]
        need4 = l.op in ("conv", "maxpool", "avgpool", "global_avgpool")
        if need4 and len(x) != 4:
            raise GraphError(f"{l.name}: {l.op} needs an [N,C,H,W] input, got {x}")
        if l.op == "conv":
            kh, kw = pair(c["size"], "size")
            sh, sw = pair(c.get("stride", 1), "stride")
            ph, pw = pair(c.get("pad", 0), "pad")
            ho, wo = out_size(x[2], kh, sh, ph), out_size(x[3], kw, sw, pw)
            self._strict(l, x, (kh, kw), (sh, sw), (ph, pw))
            if ho < 1 or wo < 1:
                raise GraphError(f"{l.name}: empty output")
            return (x[0], int(c["filters"]), ho, wo)
        if l.op in ("maxpool", "avgpool"):
            kh, kw = pair(c["size"], "size")
            sh, sw = pair(c.get("stride", c["size"]), "stride")
            ph, pw = pair(c.get("pad", 0), "pad")
            if 2 * ph > kh or 2 * pw > kw:
                raise GraphError(f"{l.name}: pad must be at most half the window "
                                 "(as in PyTorch)")
            self._strict(l, x, (kh, kw), (sh, sw), (ph, pw))
            ho, wo = out_size(x[2], kh, sh, ph), out_size(x[3], kw, sw, pw)
            if ho < 1 or wo < 1:
                raise GraphError(f"{l.name}: empty output")
            return (x[0], x[1], ho, wo)
        if l.op == "global_avgpool":
            return (x[0], x[1], 1, 1)
        if l.op == "fc":
            return (x[0], int(c["units"]))
        if l.op == "flatten":
            return (x[0], int(np.prod(x[1:])))
        if l.op in ("relu", "softmax", "dropout", "batchnorm"):
            return x
        if l.op == "add":
            for s in ins[1:]:
                if s != x:
                    raise GraphError(f"{l.name}: add of mismatched shapes {ins}")
            return x
        if l.op == "concat":
            for s in ins[1:]:
                if len(s) != len(x) or s[0] != x[0] or s[2:] != x[2:]:
                    raise GraphError(f"{l.name}: concat of mismatched shapes {ins}")
            return (x[0], sum(s[1] for s in ins)) + tuple(x[2:])
        raise GraphError(f"unhandled op {l.op}")

    def _strict(self, l, x, k, s, p):
        if not self.strict_shapes:
            return
        for n, f, st, pd in zip(x[2:], k, s, p):
            if (n + 2 * pd - f) % st != 0:
                raise GraphError(f"{l.name}: window does not tile the input "
                                 "(strict_shapes)")

    def weight_shapes(self):
        """OrderedDict tensor name -> shape, in layer order."""
        shapes = self.infer_shapes(1)
        ws = OrderedDict()
        for l in self.layers:
            x = shapes[l.inputs[0]]
            if l.op == "conv":
                kh, kw = pair(l.cfg["size"])
                ws[f"{l.name}.weight"] = (int(l.cfg["filters"]), x[1], kh, kw)
                if l.cfg.get("bias", True):
                    ws[f"{l.name}.bias"] = (int(l.cfg["filters"]),)
            elif l.op == "fc":
                fan_in = int(np.prod(x[1:]))
                ws[f"{l.name}.weight"] = (int(l.cfg["units"]), fan_in)
                if l.cfg.get("bias", True):
                    ws[f"{l.name}.bias"] = (int(l.cfg["units"]),)
            elif l.op == "batchnorm":
                for suffix in ("weight", "bias", "running_mean", "running_var"):
                    ws[f"{l.name}.{suffix}"] = (x[1],)
        return ws

    def random_weights(self, rng):
        """He-normal conv/fc weights, small random biases, random batchnorm
        parameters (var uniform in [0.5, 1.5]).  Drawn in layer order."""
        w = OrderedDict()
        for name, shp in self.weight_shapes().items():
            suffix = name.rsplit(".", 1)[1]
            if suffix == "weight" and len(shp) >= 2:
                fan_in = int(np.prod(shp[1:]))
                w[name] = rng.standard_normal(shp) * np.sqrt(2.0 / fan_in)
            elif suffix == "bias":
                w[name] = rng.standard_normal(shp) * 0.1
            elif suffix == "weight":  # batchnorm gamma
                w[name] = rng.uniform(0.5, 1.5, shp) * rng.choice([-1.0, 1.0], shp,
                                                                   p=[0.1, 0.9])
            elif suffix == "running_mean":
                w[name] = rng.standard_normal(shp) * 0.3
            elif suffix == "running_var":
                w[name] = rng.uniform(0.5, 1.5, shp)
            else:
                raise AssertionError(name)
        return w

    # ------------------------------------------------------------------
    # evaluation
    # ------------------------------------------------------------------

    def forward(self, x, weights, keep_all=False, dtype=np.float64):
        """x: [N, C, H, W] array. weights: name -> array. Returns an
        OrderedDict output name -> float64 array (all layers if keep_all).
        dtype=np.float32 runs the same code in single precision (only used to
        estimate how far an f32 implementation can be expected to drift)."""
        x = np.asarray(x, dtype=dtype)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise GraphError(f"input: expected [N]+{list(self.input_shape)}, got {x.shape}")
        self.infer_shapes(x.shape[0])  # validates shapes up front
        W = {k: np.asarray(v, dtype=dtype) for k, v in weights.items()}
        vals = {"input": x}
        for l in self.layers:
            ins = [vals[i] for i in l.inputs]
            vals[l.name] = self._eval(l, ins, W)
        if keep_all:
            return vals
        return OrderedDict((o, vals[o]) for o in self.outputs)

    def _eval(self, l, ins, W):
        c = l.cfg
        x = ins[0]

        def get(suffix):
            key = f"{l.name}.{suffix}"
            if key not in W:
                raise GraphError(f"missing weight {key!r}")
            return W[key]

        if l.op == "conv":
            b = get("bias") if c.get("bias", True) else None
            w = get("weight")
            return conv2d(x, w, b, pair(c.get("stride", 1)), pair(c.get("pad", 0)))
        if l.op == "relu":
            return np.maximum(x, x.dtype.type(0))
        if l.op == "maxpool":
            return maxpool2d(x, pair(c["size"]), pair(c.get("stride", c["size"])),
                             pair(c.get("pad", 0)))
        if l.op == "avgpool":
            return avgpool2d(x, pair(c["size"]), pair(c.get("stride", c["size"])),
                             pair(c.get("pad", 0)))
        if l.op == "global_avgpool":
            return x.mean(axis=(2, 3), keepdims=True)
        if l.op == "fc":
            b = get("bias") if c.get("bias", True) else None
            return fc(x, get("weight"), b)
        if l.op == "flatten":
            return x.reshape(x.shape[0], -1)
        if l.op == "softmax":
            return softmax(x, axis=1)
        if l.op == "add":
            out = x.copy()
            for y in ins[1:]:
                out = out + y
            return out
        if l.op == "concat":
            return np.concatenate(ins, axis=1)
        if l.op == "batchnorm":
            return batchnorm(x, get("weight"), get("bias"), get("running_mean"),
                             get("running_var"), float(c.get("eps", 1e-5)))
        if l.op == "dropout":
            return x
        raise GraphError(f"unhandled op {l.op}")


def load_graph(src):
    """src: path to a YAML file, or an already-parsed dict."""
    if isinstance(src, dict):
        return Graph(src)
    with open(src) as f:
        spec = yaml.safe_load(f)
    return Graph(spec, base_dir=os.path.dirname(os.path.abspath(src)))


def load_weights(path):
    from safetensors.numpy import load_file
    return {k: v.astype(np.float64) for k, v in load_file(path).items()}


def save_weights_f32(weights, path):
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()},
              path)


def graph_weights_path(g):
    """The graph's `weights:` path, resolved relative to the YAML file's directory."""
    if g.weights_path is None:
        return None
    return os.path.join(g.base_dir, g.weights_path)
