"""cnnc's Python bindings against the command line (the Rust API) on the same inputs.

The command line is `target/release/cnnc` of this checkout, or $CNNC_BIN; the tests fail
(not skip) when it is missing: `cargo build --release` first.
"""
import os
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

import cnnc

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "examples" / "digits"


def cli_path():
    path = Path(os.environ.get("CNNC_BIN", REPO / "target" / "release" / "cnnc"))
    if not path.exists():
        pytest.fail(f"{path} not found: build the command line with `cargo build --release`")
    return path


def cli(*args, ok=True):
    out = subprocess.run([str(cli_path()), *map(str, args)], cwd=REPO, capture_output=True, text=True)
    if ok:
        assert out.returncode == 0, out.stderr
    return out


def cli_run(graph, x, tmp_path, *flags):
    """The first output of `cnnc run` on `x`, read from its --output file."""
    xin, yout = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(xin, x)
    cli("run", graph, "--input", xin, "--output", yout, *flags)
    return np.load(yout)


@pytest.fixture(scope="module")
def digits():
    return cnnc.load(REPO / "graphs" / "digits.yaml")


@pytest.fixture(scope="module")
def images():
    x = np.load(DIGITS / "test_images.npy")
    assert x.dtype == np.float32 and x.ndim == 4
    return x


def test_digits_accuracy_equals_the_command_lines(digits, images, tmp_path):
    # `cnnc run` feeds kernels chunks of min(N, 16) images on all cores: the same here.
    model = cnnc.compile(digits, batch=16)
    y = model(images)
    assert y.shape == (len(images), 10) and y.dtype == np.float32
    ours = y.argmax(axis=1)
    script = np.load(DIGITS / "test_predictions.npy")
    labels = np.load(DIGITS / "test_labels.npy")
    np.testing.assert_array_equal(ours, script)
    theirs = cli_run("graphs/digits.yaml", images, tmp_path)
    np.testing.assert_array_equal(ours, theirs.argmax(axis=1))
    assert (ours == labels).mean() == (theirs.argmax(axis=1) == labels).mean() >= 0.95
    # Not only the classes: every output bit.
    assert np.array_equal(y, theirs)


@pytest.mark.parametrize(
    "graph, flags, kwargs",
    [
        ("graphs/digits.yaml", ["--threads", "1"], dict(threads=1)),
        ("graphs/lenet5.yaml", ["--no-winograd", "--threads", "2"], dict(winograd=False, threads=2)),
        ("graphs/resnet_basic_block.yaml", [], {}),
        ("graphs/resnet_basic_block.yaml", ["--no-winograd", "-O", "1"], dict(winograd=False, opt_level=1)),
        ("graphs/inception3a.yaml", ["--threads", "2"], dict(threads=2)),
    ],
)
def test_outputs_equal_the_rust_apis_bit_for_bit(graph, flags, kwargs, tmp_path):
    g = cnnc.load(REPO / graph)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, *g.input_shape), dtype=np.float32)
    model = cnnc.compile(g, batch=3, **kwargs)
    theirs = cli_run(graph, x, tmp_path, *flags)
    ours = model(x)
    assert ours.shape == theirs.shape
    assert np.array_equal(ours, theirs), np.abs(ours - theirs).max()


def test_a_single_chw_image_gives_a_batch_of_one(digits, images):
    model = cnnc.compile(digits)
    y1 = model.run(images[5])
    assert y1.shape == (1, 10)
    assert np.array_equal(y1[0], model(images[5:6])[0])


def test_the_interpreter_agrees_with_the_jit(digits, images):
    x = images[:50]
    ref = cnnc.interpret(digits, x)
    jit = cnnc.compile(digits)(x)
    np.testing.assert_allclose(jit, ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(ref.argmax(1), np.load(DIGITS / "test_predictions.npy")[:50])


def test_session_on_an_exported_onnx_model_matches_the_model(digits, images, tmp_path):
    onnx = tmp_path / "digits.onnx"
    cli("export", "graphs/digits.yaml", "--output", onnx)
    before = set(os.listdir(tmp_path))
    sess = cnnc.InferenceSession(str(onnx))
    assert set(os.listdir(tmp_path)) == before, "importing wrote files"
    [inp] = sess.get_inputs()
    [out] = sess.get_outputs()
    assert inp.shape == ["N", 1, 8, 8] and inp.type == "tensor(float)"
    assert out.shape == ["N", 10] and out.type == "tensor(float)"
    x = images[:64]
    [y] = sess.run([out.name], {inp.name: x})
    expected = cnnc.compile(digits)(x)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(y.argmax(1), expected.argmax(1))
    # All outputs for None, and the same model from bytes.
    assert np.array_equal(sess.run(None, {inp.name: x})[0], y)
    from_bytes = cnnc.InferenceSession(onnx.read_bytes())
    assert np.array_equal(from_bytes.run(None, {inp.name: x})[0], y)
    # A loaded ONNX graph is the same network.
    g = cnnc.load(onnx)
    assert g.input_shape == (1, 8, 8)
    assert np.array_equal(cnnc.compile(g)(x), y)


def test_session_refuses_unknown_names(tmp_path, images):
    sess = cnnc.InferenceSession(REPO / "graphs" / "digits.yaml")
    name = sess.get_inputs()[0].name
    with pytest.raises(cnnc.InputError, match="no input `wrong`"):
        sess.run(None, {"wrong": images[:1]})
    with pytest.raises(cnnc.InputError, match="no value for the model's input"):
        sess.run(None, {})
    with pytest.raises(cnnc.InputError, match="no output `nope`"):
        sess.run(["nope"], {name: images[:1]})


def test_concurrent_calls_from_four_threads_give_identical_results(images):
    g = cnnc.load(REPO / "graphs" / "lenet5.yaml")
    model = cnnc.compile(g, threads=2)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((2, 1, 32, 32), dtype=np.float32) for _ in range(8)]
    expected = [model(x) for x in xs]
    errors, results = [], {}

    def work(t):
        try:
            for rep in range(25):
                i = (t + rep) % len(xs)
                y = model(xs[i])
                if not np.array_equal(y, expected[i]):
                    errors.append((t, rep))
            results[t] = True
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == [0, 1, 2, 3]


def test_info_is_the_command_lines_table(digits):
    assert digits.info() == cli("info", "graphs/digits.yaml").stdout
    import json

    layers = json.loads(cli("info", "graphs/digits.yaml", "--json").stdout)["layers"]
    assert digits.info(as_dicts=True) == layers
    assert [l["name"] for l in layers][-1] == digits.outputs[-1]
    assert digits.input_shape == (1, 8, 8)
    assert digits.output_shapes == [(10,)]


def test_profile_has_a_row_per_layer(digits, images):
    p = cnnc.compile(digits).profile(images[:4], runs=3)
    assert len(p.layers) >= 3
    assert all(l["time_ms"] >= 0 for l in p.layers)
    assert str(p) == p.table and p.table.splitlines()[-1].startswith("total:")
    assert abs(sum(l["share"] for l in p.layers) - 1) < 1e-6


def test_errors_carry_the_command_lines_message(tmp_path):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(cnnc.IoError) as e:
        cnnc.load(missing)
    err = cli("info", missing, ok=False)
    assert err.returncode == 2
    assert err.stderr.strip() == f"error: {e.value}"
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [1, 8, 8]\nlayers:\n  - conv: {filters: 4, size: 9}\n")
    with pytest.raises(cnnc.ShapeError) as e:
        cnnc.load(bad)
    assert cli("info", bad, ok=False).stderr.strip() == f"error: {e.value}"
    assert isinstance(e.value, cnnc.Error)
    text = tmp_path / "model.onnx"
    text.write_text("not a model")
    with pytest.raises(cnnc.FormatError, match="not an ONNX model"):
        cnnc.load(text)
    with pytest.raises(cnnc.OptionsError):
        cnnc.compile(cnnc.load(REPO / "graphs" / "digits.yaml"), opt_level=7)
    with pytest.raises(cnnc.InputError):
        cnnc.compile(cnnc.load(REPO / "graphs" / "digits.yaml"), threads=0)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda x: x.astype(np.float64), "dtype float64"),
        (lambda x: x.astype(np.int32), "dtype int32"),
        (lambda x: x.astype(np.float16), "dtype float16"),
        (lambda x: x.astype(">f4"), "dtype >f4"),
        (lambda x: x[0, 0], "shape"),
        (lambda x: x.reshape(-1), "shape"),
        (lambda x: x[:, :, :7], "shape"),
        (lambda x: x[:0], "shape"),
        (lambda x: np.zeros((2, 0, 8, 8), np.float32), "shape"),
        (lambda x: np.float32(1.0), "numpy array"),
        (lambda x: x.tolist(), "numpy array"),
        (lambda x: None, "numpy array"),
    ],
)
def test_bad_inputs_raise_input_error(digits, images, make, match):
    model = cnnc.compile(digits)
    with pytest.raises(cnnc.InputError, match=match):
        model(make(images[:2]))
    with pytest.raises(cnnc.InputError, match=match):
        cnnc.interpret(digits, make(images[:2]))


def test_settling_huge_pages_drains_the_queue_and_keeps_the_results(digits, images):
    model = cnnc.compile(digits)
    x = images[:8]
    before = model(x)
    first = cnnc.settle_huge_pages()
    assert isinstance(first, int) and first >= 0
    # Everything that was waiting is collapsed (or given up): nothing is left for a second call.
    assert cnnc.settle_huge_pages() == 0
    assert np.array_equal(model(x), before)


def test_non_contiguous_float32_arrays_are_copied(digits, images):
    model = cnnc.compile(digits)
    x = images[:6]
    expected = model(x)
    fortran = np.asfortranarray(x)
    assert not fortran.flags.c_contiguous
    assert np.array_equal(model(fortran), expected)
    every_other = images[:12:2]
    assert not every_other.flags.c_contiguous
    assert np.array_equal(model(every_other), model(np.ascontiguousarray(every_other)))
    # The caller's array is left as it was.
    assert np.array_equal(x, images[:6])


def test_several_outputs_come_back_as_a_list(tmp_path):
    yaml = tmp_path / "two.yaml"
    yaml.write_text(
        "name: two\ninput: [2, 6, 6]\nseed: 3\nlayers:\n"
        "  - {name: c, conv: {filters: 3, size: 3}}\n"
        "  - {name: r, relu}\n"
        "  - {name: p, maxpool: {size: 2}}\n"
        "outputs: [c, p]\n"
    )
    g = cnnc.load(yaml)
    assert g.outputs == ["c", "p"]
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6), dtype=np.float32)
    c, p = cnnc.compile(g, opt_level=0)(x)
    assert c.shape == (2, 3, 4, 4) and p.shape == (2, 3, 2, 2)
    ref = cnnc.interpret(g, x)
    np.testing.assert_allclose(c, ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p, ref[1], rtol=1e-5, atol=1e-6)
    sess = cnnc.InferenceSession(yaml, opt_level=0)
    assert [o.name for o in sess.get_outputs()] == ["c", "p"]
    [p2] = sess.run(["p"], {"input": x})
    assert np.array_equal(p2, p)
