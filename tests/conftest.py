import os

import bilevel  # noqa: F401  (first: its XLA work-around must precede the first computation)
import jax
import pytest

jax.config.update("jax_enable_x64", True)

SHARED_DATA = os.environ.get(
    "BILEVEL_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
)


@pytest.fixture(scope="session")
def shared_data_dir():
    """Path to ../shared/data; tests using it skip cleanly when it is absent."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip("shared data directory not available")
    return os.path.abspath(SHARED_DATA)
