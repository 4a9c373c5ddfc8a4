"""Tests of the shared experiment plumbing (experiments/_cli.py)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import _cli


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_json_atomic_round_trip_and_no_temp_files(tmp_path):
    obj = {
        "a": np.float32(1.5),
        "b": jnp.arange(3),
        "c": np.array([[1.0, 2.0], [3.0, np.nan]]),
        "d": (np.int64(7), True, None, "x"),
        "e": {"nested": jnp.asarray(2.5)},
        "f": float("inf"),
    }
    path = tmp_path / "sub" / "results.json"
    assert _cli.write_json_atomic(path, obj) == path
    assert json.loads(path.read_text()) == {
        "a": 1.5,
        "b": [0, 1, 2],
        "c": [[1.0, 2.0], [3.0, None]],
        "d": [7, True, None, "x"],
        "e": {"nested": 2.5},
        "f": None,
    }
    # overwrite in place
    _cli.write_json_atomic(path, {"v": 2})
    assert _cli.read_json(path) == {"v": 2}
    assert _leftovers(path.parent) == []
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)  # usual permissions, not mkstemp's


def test_write_json_atomic_failure_keeps_old_file(tmp_path):
    path = tmp_path / "results.json"
    _cli.write_json_atomic(path, {"ok": 1})
    with pytest.raises(TypeError):
        _cli.write_json_atomic(path, {"bad": object()})
    assert _cli.read_json(path) == {"ok": 1}
    assert _leftovers(tmp_path) == []


def test_save_figure_atomic(tmp_path):
    plt = _cli.pyplot()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = _cli.save_figure(fig, tmp_path / "fig.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _leftovers(tmp_path) == []


def test_checkpoint_round_trip(tmp_path):
    ckpt = _cli.Checkpoint(tmp_path / "state")
    assert ckpt.path.name == "state.npz"
    assert not ckpt.exists() and ckpt.load() is None
    state = {
        "step": 12,
        "theta": jnp.linspace(0.0, 1.0, 5),
        "mask": np.array([True, False]),
        "config": json.dumps({"lr": 0.1}),
        "count": np.int32(3),
    }
    ckpt.save(state)
    ckpt.save(state)  # overwrite
    loaded = ckpt.load()
    assert set(loaded) == set(state)
    assert int(loaded["step"]) == 12
    np.testing.assert_array_equal(loaded["theta"], np.linspace(0.0, 1.0, 5))
    np.testing.assert_array_equal(loaded["mask"], [True, False])
    assert json.loads(str(loaded["config"])) == {"lr": 0.1}
    assert loaded["count"].dtype == np.int32
    assert _leftovers(tmp_path) == []
    ckpt.clear()
    assert not ckpt.exists()


def test_checkpoint_rejects_objects(tmp_path):
    with pytest.raises(TypeError):
        _cli.Checkpoint(tmp_path / "c.npz").save({"x": {"nested": 1}})
    assert not (tmp_path / "c.npz").exists()


def test_base_parser_defaults(monkeypatch):
    monkeypatch.delenv(_cli.DATA_DIR_ENV, raising=False)
    args = _cli.base_parser("demo").parse_args([])
    assert (args.seed, args.data_dir, args.out, args.quick) == (0, None, None, False)
    monkeypatch.setenv(_cli.DATA_DIR_ENV, "/some/data")
    args = _cli.base_parser("demo", default_out="runs/x").parse_args(["--seed", "3", "--quick"])
    assert (args.seed, args.data_dir, args.out, args.quick) == (3, "/some/data", "runs/x", True)
    args = _cli.base_parser().parse_args(["--data-dir", "d", "--out", "o"])
    assert (args.data_dir, args.out) == ("d", "o")


def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(_cli.DATA_DIR_ENV, str(tmp_path))
    assert _cli.resolve_data_dir("explicit") == _cli.Path("explicit")
    assert _cli.resolve_data_dir(None) == tmp_path
    monkeypatch.delenv(_cli.DATA_DIR_ENV)
    assert _cli.resolve_data_dir(None) is None
    # The product never falls back to the workplace's ../shared/data on its own.
    assert _cli.resolve_data_dir(None) is None


def test_load_digits_or_mnist(monkeypatch):
    monkeypatch.delenv(_cli.DATA_DIR_ENV, raising=False)
    ds = _cli.load_digits_or_mnist("digits", None, 0)
    assert ds.X_train.shape[1] == 64
    with pytest.raises(ValueError, match="dataset"):
        _cli.load_digits_or_mnist("cifar", None, 0)
    with pytest.raises(FileNotFoundError, match="BILEVEL_DATA_DIR"):
        _cli.load_digits_or_mnist("mnist", None, 0)


def test_progress_disabled_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    bar = _cli.progress(range(3))
    assert bar.disable
    assert list(bar) == [0, 1, 2]


def test_timed_separates_compile_and_run():
    f = jax.jit(lambda x: jnp.sin(x) @ x)
    t = _cli.timed(f, jnp.ones((4, 4)), repeats=3)
    assert len(t.runs_s) == 3 and t.run_s > 0 and t.first_s > 0 and t.compile_s >= 0
    np.testing.assert_allclose(t.result, np.sin(np.ones((4, 4))) @ np.ones((4, 4)))
    assert set(t.as_dict()) >= {"first_s", "compile_s", "run_median_s"}


def test_format_table():
    text = _cli.format_table([("a", 1.23456, 3), ("bb", 2.0, 10)], ["name", "x", "n"])
    lines = text.splitlines()
    assert lines[0].split() == ["name", "x", "n"]
    assert "1.235" in lines[2] and lines[3].endswith("10")
