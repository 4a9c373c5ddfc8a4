"""The pretraining experiment: a CIFAR-10 folder (a tiny fake copy), the digits fallback, the cache."""

import json
import lzma

import numpy as np


def _fake_cifar(folder, n_train=70, n_test=10):
    """The layout of the offline data folder: xz-compressed .npy images and an .npz of labels."""
    rng = np.random.default_rng(0)
    (folder / "cifar10").mkdir(parents=True)
    for part, n in (("train", n_train), ("test", n_test)):
        with lzma.open(folder / "cifar10" / f"cifar10_x_{part}.npy.xz", "wb") as fh:
            np.save(fh, rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    np.savez(folder / "cifar10" / "cifar10_labels_filenames.npz", y_train=np.arange(n_train) % 10,
             y_test=np.arange(n_test) % 10)


def test_pretrain_on_the_first_five_cifar10_classes_then_from_the_cache(tmp_path):
    from experiments import pretrain

    _fake_cifar(tmp_path / "data")
    args = ["--model", "convnet", "--protocol", "cifar10-first5", "--quick", "--width", "2",
            "--data-dir", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    first = pretrain.main(args)
    assert first["protocol"] == "cifar10-first5" and not first["fallback"] and first["num_classes"] == 5
    assert first["n_train"] == 35 and first["n_test"] == 5 and not first["cached"]  # classes 0-4 only
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["folder"] == first["folder"] and (tmp_path / "out" / "training.png").is_file()
    again = pretrain.pretrain("convnet", "cifar10-first5", quick=True, width=2, data_dir=tmp_path / "data",
                              cache_dir=tmp_path / "cache")
    assert again.info["cached"] and again.info["folder"] == first["folder"]
    assert tuple(again.model.mean) == (0.4914, 0.4822, 0.4465)  # the model normalizes its own input


def test_pretrain_falls_back_to_digits_without_data(tmp_path, monkeypatch):
    from experiments import pretrain

    monkeypatch.delenv("BILEVEL_DATA_DIR", raising=False)
    res = pretrain.pretrain("badnets", "mnist", quick=True, width=2, data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert res.info["fallback"] and res.info["protocol"] == "digits" and not res.info["cached"]
    assert 0.0 <= res.info["eval"]["accuracy"] <= 1.0 and len(res.info["history"]["loss"]) == 2
