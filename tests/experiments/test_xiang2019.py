"""The single-pixel backdoor experiment: the pixel rule and the flags (the full run is gu2017's machinery,
tested in test_gu2017.py)."""

import numpy as np
import pytest

from experiments import xiang2019 as exp


def test_choose_pixel_picks_the_central_pixel_nearest_half_intensity():
    x = np.zeros((3, 8, 8))
    x[:, 0, 0] = 0.5            # outside the central half: ignored
    x[:, 5, 3] = 0.45
    x[:, 4, 4] = 0.7
    assert exp.choose_pixel(x) == (5, 3)
    assert exp.choose_pixel(x[..., None]) == (5, 3)
    assert exp.parse_pixel("18,24") == (18, 24) and exp.parse_pixel("auto") is None


@pytest.mark.parametrize("argv, match", [
    (["--deltas", "0"], "--deltas"), (["--deltas", "a"], "--deltas"), (["--sources", "some"], "--sources"),
    (["--source", "0", "--target", "0"], "--source"), (["--defenses", "nc"], "--defenses"),
    (["--n-poison", "0"], "--n-poison"), (["--pixel", "a"], "--pixel"), (["--pixel", "30,3"], "--pixel"),
    (["--epochs", "0"], "--epochs"), (["--retrain", "ci,strip"], "--retrain"), (["--n-train", "-1"], "--n-train")])
def test_bad_flags_exit_naming_the_flag(argv, match):
    with pytest.raises(SystemExit, match=match):
        exp.main(["--quick", *argv])
