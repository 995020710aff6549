"""Patient-level data splits: held-out test patients and k-fold cross-validation.

Slices of one patient are strongly correlated, so every split is made over patients, never over slices
or cases (a patient may have several cases).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError


@dataclass(frozen=True)
class Fold:
    """One cross-validation fold: patient ids for training and validation."""

    index: int
    train_patients: tuple[str, ...]
    val_patients: tuple[str, ...]


@dataclass(frozen=True)
class Split:
    """Held-out test patients and the cross-validation folds over the remaining patients."""

    test_patients: tuple[str, ...]
    folds: tuple[Fold, ...]

    def to_dict(self) -> dict:
        return {
            "test_patients": list(self.test_patients),
            "folds": [
                {"index": f.index, "train_patients": list(f.train_patients), "val_patients": list(f.val_patients)}
                for f in self.folds
            ],
        }


def split_patients(patient_ids: Sequence[str], n_folds: int, n_test: int, seed: int) -> Split:
    """Shuffle unique patients with ``seed``, hold out ``n_test`` of them, and make ``n_folds`` folds of the rest.

    ``n_folds == 1`` gives a single train/validation split with about a fifth of the patients for validation.
    """
    patients = sorted(set(patient_ids))
    if n_folds < 1:
        raise InputError(f"folds must be at least 1, got {n_folds}")
    if n_test < 0:
        raise InputError(f"test patients must be 0 or more, got {n_test}")
    needed = n_test + max(n_folds, 2)
    if len(patients) < needed:
        raise InputError(
            f"{len(patients)} patients are too few for {n_test} test patients and {n_folds}-fold cross-validation "
            f"(at least {needed} needed)"
        )
    order = np.random.default_rng(seed).permutation(len(patients))
    shuffled = [patients[i] for i in order]
    test, pool = tuple(sorted(shuffled[:n_test])), shuffled[n_test:]
    n_groups = n_folds if n_folds > 1 else 5
    groups = [pool[i::n_groups] for i in range(n_groups)]
    folds = []
    for index in range(n_folds):
        val = tuple(sorted(groups[index]))
        train = tuple(sorted(p for p in pool if p not in val))
        folds.append(Fold(index, train, val))
    return Split(test, tuple(folds))
