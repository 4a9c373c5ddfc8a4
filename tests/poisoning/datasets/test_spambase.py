"""poisoning.datasets.spambase: bad files on synthetic copies, the real file when present."""

import numpy as np
import pytest

from poisoning.datasets import DATA_DIR_ENV, load_spambase


def _write(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    np.savetxt(folder / "spambase.data", rows, delimiter=",", fmt="%g")


def test_spambase_synthetic_and_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.uniform(0, 5, (40, 57)), np.arange(40) % 2])
    _write(tmp_path / "spambase", rows)
    ds = load_spambase(tmp_path, test_fraction=0.25, seed=0)
    assert ds.n_train == 30 and ds.n_test == 10 and ds.X_train.shape[1] == 57
    assert ds.X_train.min() == 0.0 and ds.X_train.max() == 1.0 and ds.y_train.dtype == np.int64
    assert np.bincount(ds.y_test).tolist() == [5, 5]  # stratified
    _write(tmp_path / "spambase", rows[:, 1:])  # a column short
    with pytest.raises(ValueError, match=r"spambase\.data.*58 comma-separated columns"):
        load_spambase(tmp_path)
    rows[3, -1] = 2
    _write(tmp_path / "spambase", rows)
    with pytest.raises(ValueError, match=r"spambase\.data.*0/1 label"):
        load_spambase(tmp_path)


@pytest.mark.shared_data
def test_spambase_real(shared_data_dir, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, shared_data_dir)  # resolved from the env var
    ds = load_spambase()
    y = np.concatenate([ds.y_train, ds.y_test])
    assert len(y) == 4601 and int(y.sum()) == 1813 and ds.X_train.shape[1] == 57
    assert ds.X_train.min() == 0.0 and ds.X_train.max() == 1.0 and ds.X_test.max() <= 1.0
    assert abs(ds.y_test.mean() - 1813 / 4601) < 0.01  # stratified
    raw = load_spambase(shared_data_dir, scale=False, test_fraction=0.0)
    assert raw.X_train.shape == (4601, 57) and raw.X_train.max() > 1000
    assert raw.meta["feature_names"][0] == "word_freq_make"

