"""poisoning.datasets.adult: parsing errors on synthetic files, the real UCI Adult when present."""

import numpy as np
import pytest

from poisoning.datasets import load_adult

_ROWS = [
    "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 2174, 0, 40, United-States, <=50K",
    "50, Self-emp-not-inc, 83311, Bachelors, 13, Married-civ-spouse, Exec-managerial, Husband, White, Male, 0, 0, 13, United-States, >50K",
    "38, Private, 215646, HS-grad, 9, Divorced, ?, Not-in-family, Black, Female, 0, 0, 40, United-States, <=50K",
]


def _write(folder, train_rows, test_rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adult.data").write_text("\n".join(train_rows) + "\n\n")
    (folder / "adult.test").write_text("|1x3 Cross validator\n" + "\n".join(r + "." for r in test_rows) + "\n")


def test_adult_synthetic_and_bad_rows(tmp_path):
    _write(tmp_path / "adult", _ROWS, _ROWS[:2])
    ds = load_adult(tmp_path)
    assert ds.y_train.tolist() == [0, 1, 0] and ds.y_test.tolist() == [0, 1]
    assert ds.meta["sex_train"].tolist() == [1, 1, 0] and "occupation=?" in ds.meta["feature_names"]
    a, b = ds.meta["attribute_columns"]["age"]
    assert ds.X_train[:, a].tolist() == [pytest.approx(1 / 12), 1.0, 0.0]
    _write(tmp_path / "adult", [_ROWS[0], _ROWS[1].rsplit(",", 1)[0]], _ROWS[:1])  # 14 fields
    with pytest.raises(ValueError, match=r"adult\.data:2: expected 15 fields"):
        load_adult(tmp_path)
    _write(tmp_path / "adult", _ROWS, [_ROWS[0].replace("<=50K", "lots")])
    with pytest.raises(ValueError, match=r"adult\.test:2: unknown income label"):
        load_adult(tmp_path)
    with pytest.raises(ValueError, match="missing"):
        load_adult(tmp_path, missing="impute")
    with pytest.raises(ValueError, match="drop"):
        load_adult(tmp_path, drop=("salary",))


@pytest.mark.shared_data
def test_adult_real(shared_data_dir):
    ds = load_adult(shared_data_dir)
    assert ds.X_train.shape[0] == 32561 and ds.X_test.shape[0] == 16281
    assert int(ds.y_train.sum()) == 7841 and int(ds.y_test.sum()) == 3846
    assert ds.X_train.dtype == np.float32 and ds.X_train.shape[1] == ds.X_test.shape[1] == 108
    assert ds.X_train.min() == 0.0 and ds.X_train.max() == 1.0 and ds.X_test.max() <= 1.0
    names = ds.meta["feature_names"]
    assert len(names) == 108 and "workclass=?" in names
    a, b = ds.meta["attribute_columns"]["workclass"]
    np.testing.assert_array_equal(ds.X_train[:, a:b].sum(axis=1), 1.0)  # one-hot
    assert ds.meta["sensitive_attribute"] == "sex"
    male = ds.meta["sex_columns"]["Male"]
    np.testing.assert_array_equal(ds.X_train[:, male], ds.meta["sex_train"])
    np.testing.assert_array_equal(ds.X_test[:, male], ds.meta["sex_test"])
    assert int(ds.meta["sex_train"].sum()) == 21790  # 21790 men / 10771 women in adult.data

    dropped = load_adult(shared_data_dir, missing="drop", drop_sensitive=True, drop=("fnlwgt",))
    assert dropped.X_train.shape[0] == 30162 and dropped.X_test.shape[0] == 15060
    assert dropped.meta["sex_columns"] is None and len(dropped.meta["sex_train"]) == 30162
    assert not any(n.startswith("sex=") or n == "fnlwgt" for n in dropped.meta["feature_names"])
    zero = load_adult(shared_data_dir, missing="zero")
    assert zero.X_train.shape[1] == 105
    with pytest.raises(ValueError, match="drop"):
        load_adult(shared_data_dir, drop=("salary",))

