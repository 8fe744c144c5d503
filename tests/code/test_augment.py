"""Real-photo versions of a chip: seeded by path, the chip itself at strength 0, varied above it."""

import numpy as np

from agerange.augment import degrade, degraded, variant_rng


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
