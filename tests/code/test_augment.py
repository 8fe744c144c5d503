"""Real-photo versions of a chip: seeded by path, the chip itself at strength 0, varied above it;
a head turned aside like a cylinder."""

import numpy as np

from agerange.augment import degrade, degraded, turn_head, variant_rng


def _chips(count: int = 6, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_a_variant_is_the_same_in_every_run_and_differs_between_variants_and_images():
    chips, paths = _chips(), [f"{i}_0_0_x.jpg" for i in range(6)]
    first, again = degraded(chips, paths, 0, 0.5), degraded(chips, paths, 0, 0.5)
    np.testing.assert_array_equal(first, again)
    assert first.shape == chips.shape and first.dtype == np.uint8
    assert not np.array_equal(first, degraded(chips, paths, 1, 0.5))
    assert not np.array_equal(first, chips)


def test_strength_zero_gives_the_chip_or_its_mirror():
    chip = _chips(1)[0]
    for variant in range(8):
        out = degrade(chip, variant_rng("a.jpg", variant), 0.0)
        assert np.array_equal(out, chip) or np.array_equal(out, chip[:, ::-1])


def test_stronger_changes_move_further_from_the_chip():
    chips, paths = _chips(40), [f"{i}.jpg" for i in range(40)]

    def distance(strength: float) -> float:
        return float(np.abs(degraded(chips, paths, 0, strength).astype(int) - chips).mean())

    assert distance(0.2) < distance(1.0)


def _marker_columns(chip: np.ndarray) -> list[float]:
    """Centres of the bright vertical stripes of a mostly dark chip, in columns."""
    bright = chip[:, :, 0].mean(axis=0) > 20
    columns = np.flatnonzero(bright)
    runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
    weights = chip[:, :, 0].mean(axis=0)
    return [float((run * weights[run]).sum() / weights[run].sum()) for run in runs]


def test_a_turned_head_brings_the_eyes_together_towards_the_far_side():
    size, radius, turn = 200, 0.65, np.deg2rad(30)
    chip = np.zeros((size, size, 3), np.uint8)
    eyes = [-0.39, 0.39]  # half chip widths from the centre, as in an aligned chip
    for eye in eyes:
        column = int(round((eye + 1) / 2 * size))
        chip[:, column - 2 : column + 2] = 255
    turned = turn_head(chip, 30)
    # on a cylinder of radius r, a point at x moves to r sin(asin(x / r) + turn)
    expected = [(radius * np.sin(np.arcsin(eye / radius) + turn) + 1) / 2 * size for eye in eyes]
    found = _marker_columns(turned)
    assert len(found) == 2
    np.testing.assert_allclose(found, expected, atol=1.5)
    assert found[1] - found[0] < 0.9 * (_marker_columns(chip)[1] - _marker_columns(chip)[0])
    # the other way is the mirror image; no turn leaves the chip as it was
    face = _chips(1, 60)[0]
    np.testing.assert_array_equal(turn_head(face, -30), turn_head(face[:, ::-1], 30)[:, ::-1])
    assert not np.array_equal(turn_head(face, -30), turn_head(face, 30))
    np.testing.assert_array_equal(turn_head(face, 0), face)


def test_what_lies_beyond_the_far_side_of_the_head_is_shown_as_it_was():
    chip = _chips(1, 100)[0]
    turned = turn_head(chip, 40)
    beyond = slice(int(np.ceil((0.65 + 1) / 2 * 100)) + 1, 100)
    np.testing.assert_array_equal(turned[:, beyond], chip[:, beyond])
    assert not np.array_equal(turned[:, :80], chip[:, :80])
