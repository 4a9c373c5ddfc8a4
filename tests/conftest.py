import os

# Most of the suite is compile-bound (measured: 58 % of three test files' time is XLA compilation) on tiny
# problems, so it asks XLA for its cheapest compilation (backend optimisation level 0, no expensive LLVM
# passes; those files: 188 s -> 123 s), for the same assertions. Tests that train networks for many steps are
# run-bound and slower that way (Neural Cleanse 4x): they carry ``@pytest.mark.xla_optimized`` and compile with
# JAX's defaults. Set before JAX starts; subprocesses (README examples) inherit it. The library, the
# experiments and the benchmarks keep JAX's defaults. ``JAX_DISABLE_MOST_OPTIMIZATIONS=0`` turns it off.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
CHEAP_XLA = os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].strip().lower() in ("1", "true", "yes", "on")

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


def pytest_configure(config):
    config.addinivalue_line("markers", "xla_optimized: compile with JAX's default XLA optimisations (run-bound "
                                       "tests; see the top of tests/conftest.py)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """Per test, before its fixtures: XLA's cheapest compilation unless the test is marked ``xla_optimized``
    (the flag is read when a function is compiled; an executable compiled earlier keeps its setting)."""
    jax.config.update("jax_disable_most_optimizations", CHEAP_XLA and item.get_closest_marker("xla_optimized") is None)
