import pytest

from poisoning.datasets import DATA_DIR_ENV, load_digits


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    """Tests control BILEVEL_DATA_DIR themselves."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


@pytest.fixture(scope="package")
def digits():
    return load_digits()


@pytest.fixture(scope="package")
def mnist(shared_data_dir):
    from poisoning.datasets import load_mnist

    return load_mnist(shared_data_dir)
