"""Checkpoints, kill-and-resume, and the cache of trained models."""

import json

import numpy as np
import pytest

from poisoning.training import (
    cached_train,
    fit,
    init_state,
    load_state,
    resolve_cache_dir,
    save_state,
    train,
)
from tests.poisoning.training._tiny import CONFIG, MODEL, STEPS, data, key, leaves_equal


class Killed(Exception):
    pass


def test_save_load_roundtrip_and_mismatch(tmp_path):
    x, y = data()
    s0 = init_state(MODEL, CONFIG, x, key(0), steps_per_epoch=STEPS)
    path = save_state(tmp_path / "s.npz", s0, {"note": "hello", "n": 3})
    loaded, meta = load_state(path, s0)
    assert leaves_equal(loaded, s0) and loaded.steps_per_epoch == STEPS
    assert str(meta["note"]) == "hello" and int(meta["n"]) == 3
    with np.load(path, allow_pickle=False) as f:  # plain arrays, no pickle
        assert "state/params/head/kernel" in f.files
    other = init_state(MODEL.clone(num_classes=4), CONFIG, x, key(0), steps_per_epoch=STEPS)
    with pytest.raises(ValueError, match="shape"):
        load_state(path, other)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    x, y = data()
    cfg = CONFIG.replace(epochs=3)
    s0 = init_state(MODEL, cfg, x, key(0), steps_per_epoch=STEPS)
    whole = fit(MODEL, s0, (x, y), cfg, key=key(1), progress=False)
    ckpt = tmp_path / "run.npz"

    def kill_after_first(epoch, state, metrics):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        fit(MODEL, s0, (x, y), cfg, key=key(1), checkpoint=ckpt, callback=kill_after_first, progress=False)
    assert ckpt.is_file()
    resumed = fit(MODEL, s0, (x, y), cfg, key=key(1), checkpoint=ckpt, progress=False)
    assert leaves_equal(resumed.state, whole.state)
    assert resumed.history["epoch"] == [1, 2, 3] and resumed.history["loss"] == whole.history["loss"]
    # fit is train with checkpoints: the same bits
    assert leaves_equal(train(MODEL, s0, (x, y), cfg, key=key(1)), whole.state)
    with pytest.raises(ValueError, match="another run"):
        fit(MODEL, s0, (x, y), cfg, key=key(2), checkpoint=ckpt, progress=False)


def test_cache_trains_once_then_loads(tmp_path, monkeypatch):
    x, y = data()
    cfg = CONFIG.replace(epochs=1)
    first = cached_train("tiny", MODEL, (x, y), cfg, seed=3, spec={"data": "tiny"}, eval_data=(x, y),
                         cache_dir=tmp_path, progress=False)
    assert not first.cached and (first.folder / "state.npz").is_file()
    assert not (first.folder / "checkpoint.npz").exists()
    info = json.loads((first.folder / "spec.json").read_text())
    assert info["seed"] == 3 and 0.0 <= info["eval"]["accuracy"] <= 1.0
    monkeypatch.setenv("BILEVEL_CACHE_DIR", str(tmp_path))
    again = cached_train("tiny", MODEL, (x, y), cfg, seed=3, spec={"data": "tiny"}, progress=False)
    assert again.cached and again.folder == first.folder and leaves_equal(again.state, first.state)
    other = cached_train("tiny", MODEL, (x, y), cfg, seed=4, spec={"data": "tiny"}, progress=False)
    assert not other.cached and other.folder != first.folder  # another seed: another model


def test_cache_folder_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("BILEVEL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir() == tmp_path / "xdg" / "bilevel-poisoning"
    monkeypatch.setenv("BILEVEL_CACHE_DIR", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    with pytest.raises(ValueError, match="name"):
        cached_train("bad name!", MODEL, data(), CONFIG, cache_dir=tmp_path)
