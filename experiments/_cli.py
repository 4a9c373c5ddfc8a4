"""Shared plumbing of the experiments: flags, atomic outputs, progress bars, checkpoints, timings.

Every experiment script is ``python -m experiments.NAME [flags]`` with a ``main(argv=None)`` and uses:

- :func:`base_parser`: the common flags ``--seed``, ``--data-dir`` (default ``$BILEVEL_DATA_DIR``),
  ``--out DIR`` and ``--quick`` (a few steps, for tests and smoke runs);
- :func:`write_json_atomic` / :func:`save_figure`: outputs are written to a temporary file in the
  destination folder and moved into place with :func:`os.replace`, so a crash or a ``Ctrl-C`` never
  leaves a half-written ``results.json`` or PNG behind;
- :func:`progress`: a ``tqdm`` bar on interactive terminals, silent under CI or when piped;
- :class:`Checkpoint`: a small dict of arrays saved atomically (``.npz``, loaded without pickle),
  so long experiments can resume;
- :func:`timed`: compile time vs. run time of a jitted function.

Matplotlib is imported lazily (:func:`pyplot`) with the non-interactive ``Agg`` backend, so scripts
run headless and importing this module stays cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import tempfile
import zipfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "DATA_DIR_ENV",
    "base_parser",
    "resolve_data_dir",
    "ensure_dir",
    "to_jsonable",
    "write_json_atomic",
    "read_json",
    "pyplot",
    "save_figure",
    "save_poisons_beside_bases",
    "progress",
    "Checkpoint",
    "Timing",
    "timed",
    "format_table",
    "binomial_ci",
]

DATA_DIR_ENV = "BILEVEL_DATA_DIR"  # = poisoning.datasets.DATA_DIR_ENV (not imported: _cli stays cheap)


# --------------------------------------------------------------------------------------------------
# flags


def base_parser(description: str | None = None, *, default_out: str | None = None) -> argparse.ArgumentParser:
    """An :class:`argparse.ArgumentParser` with the flags shared by all experiments.

    - ``--seed`` (int, default 0): seeds data splits and any randomness;
    - ``--data-dir``: folder of the offline data sets (default: ``$BILEVEL_DATA_DIR``, else ``None``);
    - ``--out DIR``: where results and figures go (default ``default_out``);
    - ``--quick``: a short run for tests and smoke checks.
    """
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (data split, initialisation)")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get(DATA_DIR_ENV) or None,
        help=f"folder of the offline data sets (defaults to ${DATA_DIR_ENV} when set)",
    )
    parser.add_argument("--out", metavar="DIR", default=default_out, help="output folder for results and figures")
    parser.add_argument("--quick", action="store_true", help="a short run (tests, smoke checks)")
    return parser


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The data folder to use: :func:`poisoning.datasets.resolve_data_dir` (``data_dir``, else
    ``$BILEVEL_DATA_DIR``, else ``None``; callers must cope with no data). No path outside the
    repository is ever assumed."""
    from poisoning.datasets import resolve_data_dir as resolve  # lazy: importing _cli stays cheap

    return resolve(data_dir or None)


def parse_budgets(values) -> list[int]:
    """``--budgets`` as sorted distinct poison counts, each >= 1 (``SystemExit`` otherwise)."""
    budgets = sorted(set(int(b) for b in values))
    if not budgets or budgets[0] < 1:
        raise SystemExit("--budgets must be >= 1")
    return budgets


def parse_fractions(values, flag: str = "--eps") -> list[float]:
    """The sorted distinct fractions in ``values`` (e.g. poison fractions eps), each in (0, 1); a
    ``SystemExit`` naming ``flag`` otherwise."""
    grid = sorted(set(float(v) for v in values))
    if not grid or not all(0.0 < v < 1.0 for v in grid):
        raise SystemExit(f"{flag} must be values in (0, 1), got {values}")
    return grid


def load_digits_or_mnist(dataset: str, data_dir=None, seed: int = 0):
    """``poisoning.datasets`` loader for the image experiments: sklearn's digits (offline) or MNIST from
    ``data_dir`` / ``$BILEVEL_DATA_DIR``."""
    from poisoning import datasets as data

    if dataset == "digits":
        return data.load_digits(seed=seed)
    if dataset == "mnist":
        return data.load_mnist(resolve_data_dir(data_dir))
    raise ValueError(f"dataset must be 'digits' or 'mnist', got {dataset!r}")


def save_poison_grid(X_start, X_poison, path, max_points: int = 10):
    """Save poison images (bottom row) under their starting points (top row); square images only.

    Returns the path written, or ``None`` when the features are not a square image.
    """
    import numpy as np

    X_start, X_poison = np.asarray(X_start), np.asarray(X_poison)
    side = int(round(np.sqrt(X_start.shape[1])))
    if side * side != X_start.shape[1]:
        return None
    plt = pyplot()
    k = min(len(X_poison), max_points)
    fig, axes = plt.subplots(2, k, figsize=(1.3 * k, 2.8), squeeze=False)
    for j in range(k):
        for r, (img, title) in enumerate(((X_start[j], "start"), (X_poison[j], "poison"))):
            axes[r, j].imshow(img.reshape(side, side), cmap="gray", vmin=0, vmax=1)
            axes[r, j].set_xticks([]), axes[r, j].set_yticks([])
            if j == 0:
                axes[r, j].set_ylabel(title)
    return save_figure(fig, path)


def save_poisons_beside_bases(target, bases, poisons, path, *, target_title: str = "target", k: int = 5):
    """Save the target image (top left) beside ``k`` base images (top row), their poisons (middle row)
    and the differences, stretched to the full gray range (bottom row); HWC images in [0, 1]."""
    import numpy as np

    plt = pyplot()
    k = min(k, len(poisons))
    fig, axes = plt.subplots(3, k + 1, figsize=(1.6 * (k + 1), 5))
    for ax in axes.ravel():
        ax.axis("off")
    axes[0, 0].imshow(np.clip(target, 0, 1))
    axes[0, 0].set_title(target_title, fontsize=8)
    for j in range(k):
        b, q = np.asarray(bases[j]), np.asarray(poisons[j])
        axes[0, j + 1].imshow(np.clip(b, 0, 1)), axes[0, j + 1].set_title("base", fontsize=8)
        axes[1, j + 1].imshow(np.clip(q, 0, 1)), axes[1, j + 1].set_title("poison", fontsize=8)
        d = q - b
        axes[2, j + 1].imshow(np.clip(0.5 + d / (2 * max(np.abs(d).max(), 1e-8)), 0, 1))
        axes[2, j + 1].set_title("difference", fontsize=8)
    return save_figure(fig, path)


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) if missing; return it as a :class:`~pathlib.Path`."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


# --------------------------------------------------------------------------------------------------
# atomic writes


_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


@contextlib.contextmanager
def _atomic_target(path: str | os.PathLike, mode: str = "w"):
    """Yield an open temporary file next to ``path``; on success it replaces ``path`` atomically.

    The temporary file lives in the destination folder (``os.replace`` is atomic only within one file
    system) and is removed if the body raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/JAX scalars and arrays (and tuples, paths, dataclasses) to plain JSON values.

    Arrays become (nested) lists; non-finite floats become ``None`` so the output is strict JSON.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, (np.generic, np.ndarray)) or hasattr(obj, "__array__"):
        arr = np.asarray(obj)
        if arr.dtype.kind == "b":
            return arr.tolist()
        if arr.dtype.kind in "iu":
            return arr.tolist()
        if arr.dtype.kind == "f":
            if arr.ndim == 0:
                return to_jsonable(float(arr))
            return [to_jsonable(v) for v in arr]
        if arr.dtype.kind in "US":
            return arr.tolist()
    raise TypeError(f"to_jsonable: cannot convert object of type {type(obj).__name__}")


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` (converted by :func:`to_jsonable`) as JSON to ``path`` atomically. Returns the path."""
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False, sort_keys=False)
    with _atomic_target(path, "w") as f:
        f.write(text + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------------------------------
# figures


def pyplot():
    """``matplotlib.pyplot`` with the headless ``Agg`` backend (unless ``MPLBACKEND`` chose one)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, *, close: bool = True, dpi: int = 120, **savefig_kw) -> Path:
    """Save ``fig`` to ``path`` atomically (format from the suffix, default PNG); close it by default."""
    path = Path(path)
    fmt = savefig_kw.pop("format", None) or (path.suffix[1:].lower() if path.suffix else "png")
    savefig_kw.setdefault("bbox_inches", "tight")
    try:
        with _atomic_target(path, "wb") as f:
            fig.savefig(f, format=fmt, dpi=dpi, **savefig_kw)
    finally:
        if close:
            pyplot().close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# progress bars


def _progress_disabled() -> bool:
    if os.environ.get("CI"):
        return True
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):
        return True


def progress(iterable: Iterable | None = None, **kw):
    """``tqdm(iterable, **kw)``: shown on an interactive terminal, disabled under ``$CI`` or when stderr
    is not a TTY; ``leave=False`` and ``dynamic_ncols=True`` unless given."""
    from tqdm.auto import tqdm

    kw.setdefault("leave", False)
    kw.setdefault("dynamic_ncols", True)
    if "disable" not in kw:
        kw["disable"] = _progress_disabled()
    return tqdm(iterable, **kw)


# --------------------------------------------------------------------------------------------------
# checkpoints


class Checkpoint:
    """A small state dict of arrays, saved atomically to one ``.npz`` file, loaded without pickle.

    Values are anything :func:`numpy.asarray` turns into a numeric, boolean or string array (JAX arrays,
    numpy scalars, Python numbers and strings); keys are strings. ``load`` returns ``None`` when no
    checkpoint exists, else a dict of numpy arrays (0-d entries as numpy scalars)::

        ckpt = Checkpoint(out / "checkpoint.npz")
        state = ckpt.load() or {"step": 0, "theta": theta0}
        ...
        ckpt.save({"step": step, "theta": theta})
    """

    def __init__(self, path: str | os.PathLike):
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        self.path = path

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, state: Mapping[str, Any]) -> Path:
        arrays = {}
        for key, value in state.items():
            if not isinstance(key, str):
                raise TypeError(f"Checkpoint keys must be strings, got {key!r}")
            arr = np.asarray(value)
            if arr.dtype.kind not in "biufcUS":
                raise TypeError(f"Checkpoint value {key!r} has unsupported dtype {arr.dtype} (no pickling)")
            arrays[key] = arr
        with _atomic_target(self.path, "wb") as f:
            np.savez(f, **arrays)
        return self.path

    def load(self) -> dict[str, Any] | None:
        """The saved state, or ``None`` when there is none. A damaged file (truncated, not an npz, holding
        pickled objects) raises ``ValueError`` naming it (rerun with ``--fresh`` to start over)."""
        if not self.exists():
            return None
        try:
            with np.load(self.path, allow_pickle=False) as data:
                return {k: (data[k][()] if data[k].ndim == 0 else data[k]) for k in data.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
            raise ValueError(f"checkpoint {str(self.path)!r} is damaged or not a checkpoint ({type(e).__name__}: "
                             f"{e}); delete it or rerun with --fresh") from e

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r})"


# --------------------------------------------------------------------------------------------------
# timing


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock times of a jitted function, in seconds.

    Attributes:
      first_s: the first call (tracing + compilation + one run).
      run_s: median of the later calls (compiled).
      runs_s: all later calls.
      result: the value of the last call.
    """

    first_s: float
    run_s: float
    runs_s: tuple[float, ...]
    result: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def compile_s(self) -> float:
        """Estimated tracing + compilation time: first call minus a typical compiled call."""
        return max(self.first_s - self.run_s, 0.0)

    @property
    def min_s(self) -> float:
        return min(self.runs_s) if self.runs_s else float("nan")

    def as_dict(self) -> dict[str, float]:
        return {
            "first_s": self.first_s,
            "compile_s": self.compile_s,
            "run_median_s": self.run_s,
            "run_min_s": self.min_s,
            "repeats": len(self.runs_s),
        }


def _block(x):
    import jax

    return jax.block_until_ready(x)


def timed(fn: Callable, *args, repeats: int = 5, **kwargs) -> Timing:
    """Time ``fn(*args, **kwargs)`` (typically jitted): the first call (compile + run) vs. the median of
    ``repeats`` later calls, each waited for with :func:`jax.block_until_ready`."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    t0 = time.perf_counter()
    result = _block(fn(*args, **kwargs))
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = _block(fn(*args, **kwargs))
        runs.append(time.perf_counter() - t0)
    return Timing(first_s=first, run_s=float(np.median(runs)), runs_s=tuple(runs), result=result)


# --------------------------------------------------------------------------------------------------
# tables


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], *, floatfmt: str = ".4g") -> str:
    """A plain-text table (right-aligned numbers, left-aligned text) for console output."""

    def cell(v):
        if isinstance(v, (float, np.floating)):
            return format(float(v), floatfmt)
        return str(v)

    text = [[cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    def is_number(v):
        if isinstance(v, bool):
            return False
        if isinstance(v, (int, float, np.number)):
            return True
        if isinstance(v, str):
            try:
                float(v.rstrip("x%"))
                return True
            except ValueError:
                return v in ("-", "")
        return False

    numeric = [all(is_number(r[i]) for r in rows if i < len(r)) for i in range(len(headers))]

    def fmt(row):
        return "  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    lines = [fmt(list(headers)), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in text]
    return "\n".join(line.rstrip() for line in lines)


# --------------------------------------------------------------------------------------------------
# success rates


def binomial_ci(successes: int, trials: int, *, confidence: float = 0.95) -> tuple[float, float]:
    r"""Exact (Clopper-Pearson) confidence interval of a success probability from ``successes`` of
    ``trials`` independent trials: the ``(1-confidence)/2`` and ``(1+confidence)/2`` quantiles of
    :math:`\mathrm{Beta}(s, t-s+1)` and :math:`\mathrm{Beta}(s+1, t-s)` (0 and 1 at the ends).
    Conservative: it covers the true rate with probability at least ``confidence``."""
    from scipy.stats import beta

    s, t = int(successes), int(trials)
    if t < 1 or not 0 <= s <= t:
        raise ValueError(f"binomial_ci needs 0 <= successes <= trials and trials >= 1, got {s} of {t}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"argument 'confidence' must be in (0, 1), got {confidence!r}")
    a = 1.0 - confidence
    lo = 0.0 if s == 0 else float(beta.ppf(a / 2, s, t - s + 1))
    hi = 1.0 if s == t else float(beta.ppf(1 - a / 2, s + 1, t - s))
    return lo, hi
