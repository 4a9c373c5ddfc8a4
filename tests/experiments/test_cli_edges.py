"""Experiment CLIs reject bad ranges naming the flag; damaged checkpoints name the file."""

import numpy as np
import pytest

from experiments import _cli, biggio2012, munoz2017


def test_damaged_checkpoint_names_the_file(tmp_path):
    ckpt = _cli.Checkpoint(tmp_path / "checkpoint.npz")
    ckpt.save({"a": np.arange(3)})
    data = ckpt.path.read_bytes()
    ckpt.path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match="checkpoint.npz.*--fresh"):
        ckpt.load()
    ckpt.clear()
    assert ckpt.load() is None


@pytest.mark.parametrize("argv", [["--n-val", "0"], ["--n-train", "0"], ["--steps", "0"], ["--budgets", "0"],
                                  ["--step-size", "0"]])
def test_biggio2012_rejects_bad_ranges(tmp_path, argv):
    with pytest.raises(SystemExit, match=argv[0].lstrip("-").split("-")[0]):
        biggio2012.main(argv + ["--quick", "--no-plots", "--out", str(tmp_path)])


@pytest.mark.parametrize("argv", [["--n-train", "0"], ["--n-val", "0"], ["--budgets", "-1"]])
def test_munoz2017_rejects_bad_ranges(tmp_path, argv):
    with pytest.raises(SystemExit):
        munoz2017.main(argv + ["--quick", "--no-plots", "--out", str(tmp_path)])
