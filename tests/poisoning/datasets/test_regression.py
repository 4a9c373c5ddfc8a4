"""poisoning.datasets.regression: Jagielski et al. 2018's preprocessed CSVs (synthetic and real)."""

import numpy as np
import pytest

from poisoning.datasets import load_dataset, load_house_prices, load_warfarin


def test_preprocessed_csv_synthetic_and_bad_header(tmp_path):
    folder = tmp_path / "warfarin"
    folder.mkdir()
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (8, 4))
    header = "TherapeuticDoseofWarfarin,f1,f2,f3"
    np.savetxt(folder / "pharm-preproc.csv", a, delimiter=",", header=header, comments="")
    ds = load_warfarin(tmp_path, test_fraction=0.25, seed=0)
    assert ds.task == "regression" and ds.n_train == 6 and ds.n_test == 2 and ds.X_train.shape[1] == 3
    assert ds.meta["target_name"] == "TherapeuticDoseofWarfarin" and ds.meta["feature_names"] == ("f1", "f2", "f3")
    np.testing.assert_allclose(np.sort(np.concatenate([ds.y_train, ds.y_test])), np.sort(a[:, 0]), rtol=1e-6)
    np.savetxt(folder / "pharm-preproc.csv", a, delimiter=",", header="y,f1,f2", comments="")
    with pytest.raises(ValueError, match=r"pharm-preproc\.csv.*header has 3 columns"):
        load_warfarin(tmp_path)


@pytest.mark.shared_data
def test_house_prices_and_warfarin_real(shared_data_dir):
    hp = load_house_prices(shared_data_dir, test_fraction=0.0)
    assert hp.X_train.shape == (1460, 274) and hp.y_train.shape == (1460,) and hp.task == "regression"
    assert hp.meta["target_name"] == "SalePrice" and len(hp.meta["feature_names"]) == 274
    for arr in (hp.X_train, hp.y_train):
        assert arr.dtype == np.float32 and arr.min() >= 0.0 and arr.max() <= 1.0
    split_hp = load_dataset("house_prices", shared_data_dir)
    assert split_hp.n_train + split_hp.n_test == 1460 and split_hp.n_test == 365
    wf = load_warfarin(shared_data_dir)
    assert wf.n_train + wf.n_test == 4683 and wf.X_train.shape[1] == 204
    assert wf.meta["target_name"] == "TherapeuticDoseofWarfarin"
