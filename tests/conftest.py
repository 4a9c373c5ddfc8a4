import os

# The suite is dominated by XLA:CPU compilation of many small programs, not by running them: without
# LLVM's optimization passes it compiles about 35-40 % faster (CPU seconds, measured on test_loop.py,
# test_huang2020.py and test_victims.py) and computes the same numbers. Set before JAX starts its backend;
# a user's own choice of the level is kept.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
                               " --xla_llvm_disable_expensive_passes=true").strip()

import bilevel  # noqa: E402, F401  (before jax: its XLA work-around must precede the first computation)
import jax  # noqa: E402
import pytest  # noqa: E402

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
