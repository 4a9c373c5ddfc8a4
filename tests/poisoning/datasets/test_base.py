"""poisoning.datasets.base and the package: containers, resolve_data_dir, not-found errors,
load_dataset, and the hygiene of every loader module (no unpickling, no download, no fixed path)."""

import ast
import dataclasses
import importlib
import inspect
import os
import pkgutil
from pathlib import Path

import numpy as np
import pytest

import poisoning.datasets as D
from poisoning.datasets import DATA_DIR_ENV, DATASETS, Dataset, ProtocolSplit, load_dataset, resolve_data_dir


def test_resolve_data_dir_argument_env_and_none(monkeypatch, tmp_path):
    assert resolve_data_dir() is None
    monkeypatch.setenv(DATA_DIR_ENV, "   ")  # blank counts as unset
    assert resolve_data_dir() is None
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir(tmp_path / "x") == tmp_path / "x"  # the argument wins
    assert resolve_data_dir(str(tmp_path / "y")) == tmp_path / "y"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_dir("~/d") == tmp_path / "d"


def test_cli_uses_the_one_resolve_data_dir(monkeypatch, tmp_path):
    from experiments import _cli

    assert _cli.DATA_DIR_ENV == DATA_DIR_ENV
    calls = []
    monkeypatch.setattr(D, "resolve_data_dir", lambda d=None: calls.append(d) or Path("/from/datasets"))
    assert _cli.resolve_data_dir("given") == Path("/from/datasets") and calls == ["given"]
    monkeypatch.undo()
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    assert _cli.resolve_data_dir("") is None and _cli.resolve_data_dir(None) is None
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert _cli.resolve_data_dir(None) == tmp_path


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "cifar100", "spambase", "adult",
                                  "house_prices", "warfarin"])
def test_missing_files_raise_file_not_found(tmp_path, name):
    with pytest.raises(FileNotFoundError) as exc:
        load_dataset(name, tmp_path / "nope")
    msg = str(exc.value)
    assert "BILEVEL_DATA_DIR" in msg and "data_dir" in msg and str(tmp_path / "nope") in msg
    expected = {"mnist": "train-images-idx3-ubyte.gz", "fashion_mnist": "fashion-mnist",
                "cifar10": "cifar10_x_train.npy.xz", "cifar100": "cifar-100-binary",
                "spambase": "spambase.data", "adult": "adult.test",
                "house_prices": "house-processed.csv", "warfarin": "pharm-preproc.csv"}[name]
    assert expected in msg
    with pytest.raises(FileNotFoundError, match="BILEVEL_DATA_DIR"):
        load_dataset(name)  # no argument, env var unset


def test_load_dataset_dispatch_and_unknown_name():
    ds = load_dataset("Breast-Cancer", test_fraction=0.5)
    assert ds.name == "breast_cancer" and ds.n_test == round(0.5 * 569)
    with pytest.raises(ValueError) as exc:
        load_dataset("svhn")
    for name in DATASETS:
        assert name in str(exc.value)
    with pytest.raises(TypeError, match="name"):
        load_dataset(3)
    assert set(DATASETS) == {"mnist", "fashion_mnist", "cifar10", "cifar100", "digits", "breast_cancer",
                             "diabetes", "spambase", "adult", "house_prices", "warfarin"}


def test_dataset_is_frozen_and_validated(digits):
    with pytest.raises(dataclasses.FrozenInstanceError):
        digits.X_train = None
    with pytest.raises(ValueError, match="y_train"):
        Dataset(np.zeros((3, 2)), np.zeros(2), np.zeros((0, 2)), np.zeros(0), "x")
    with pytest.raises(ValueError, match="y_test"):
        Dataset(np.zeros((2, 2)), np.zeros(2), np.zeros((1, 2)), np.zeros(3), "x")
    assert "X_train=float32[" in repr(digits) and digits.task == "classification"
    p = ProtocolSplit(*(np.zeros((2, 1)), np.zeros(2)) * 3, name="p")
    assert "ProtocolSplit(name='p'" in repr(p)


def _modules():
    return [importlib.import_module(f"poisoning.datasets.{m.name}") for m in pkgutil.iter_modules(D.__path__)]


def test_every_module_never_unpickles_downloads_or_assumes_a_path():
    mods = [D, *_modules()]
    assert {m.__name__.rsplit(".", 1)[-1] for m in mods} >= {"base", "splits", "protocols", "idx", "mnist",
                                                             "cifar", "embedded", "spambase", "adult",
                                                             "regression"}
    for mod in mods:
        source = inspect.getsource(mod)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in {"pickle", "cPickle", "dill", "joblib", "urllib", "requests"}
                               for n in names), (mod.__name__, names)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                base = node.func.value
                if isinstance(base, ast.Name) and base.id in {"np", "numpy"}:
                    kws = {k.arg: k.value for k in node.keywords}
                    assert "allow_pickle" in kws and isinstance(kws["allow_pickle"], ast.Constant), mod.__name__
                    assert kws["allow_pickle"].value is False, mod.__name__
        assert "shared/data" not in source and "shared" + "_data" not in source, mod.__name__
        assert "/work" + "/" not in source and "pandas" not in source, mod.__name__
        assert mod.__doc__ and len(mod.__doc__) > 80, f"{mod.__name__} needs a docstring saying what it is"


def test_all_is_curated_and_importable():
    for mod in [D, *_modules()]:
        for name in getattr(mod, "__all__", ()):
            assert hasattr(mod, name), (mod.__name__, name)
    assert len(D.__all__) == len(set(D.__all__))
    assert not [n for n in D.__all__ if n.startswith("_")]
    assert os.path.basename(D.__file__) == "__init__.py"


def test_package_docstring_example_runs():
    doc = D.__doc__
    block = doc[doc.index("Example (runs offline)::"):].split("::", 1)[1]
    code = "\n".join(line[4:] for line in block.splitlines())
    namespace = {}
    exec(compile(code, "poisoning.datasets docstring", "exec"), namespace)
    split = namespace["split"]
    assert split.X_train.shape == (100, 64) and set(split.y_train.tolist()) == {0, 1}
