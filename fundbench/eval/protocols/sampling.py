"""Patient-grouped sampling of few-shot support sets and validation splits.

Everything here indexes into the *training pool* of a task; the test split is never
passed in, so nothing sampled here can leak test images.
"""

from __future__ import annotations

import warnings

import numpy as np

from fundbench.api.errors import DataError


def sample_support(
    labels: np.ndarray, groups: np.ndarray, k: int, seed: int, n_classes: int
) -> np.ndarray:
    """Pick ``k`` images per class from the training pool; return their sorted indices.

    Shots of one class are spread over patients: the patients having at least one
    image of the class are shuffled and visited in turn, taking one not-yet-used
    image of that class per visit. So the ``k`` shots come from ``k`` different
    patients when there are that many, and further images of already-used patients
    are taken only when there are not. A class with fewer than ``k`` images gives all
    of them. The draw depends on ``(seed, k)`` only, so a seed reproduces its set.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if labels.shape[0] != groups.shape[0]:
        raise ValueError(
            f"labels ({labels.shape[0]}) and groups ({groups.shape[0]}) differ in length"
        )
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    rng = np.random.default_rng([seed, k])
    chosen = [_sample_class(np.flatnonzero(labels == c), groups, k, rng) for c in range(n_classes)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _sample_class(
    idx: np.ndarray, groups: np.ndarray, k: int, rng: np.random.Generator
) -> np.ndarray:
    """Round-robin over shuffled patients, one shuffled image of theirs per visit."""
    if idx.size == 0:
        return idx
    patients = np.unique(groups[idx])
    rng.shuffle(patients)
    queues = [rng.permutation(idx[groups[idx] == p]).tolist() for p in patients]
    taken: list[int] = []
    while len(taken) < k and any(queues):
        for queue in queues:
            if queue and len(taken) < k:
                taken.append(queue.pop())
    return np.asarray(taken, dtype=np.int64)


def carve_validation(
    labels: np.ndarray, groups: np.ndarray, *, fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split the training pool into ``(fit_idx, val_idx)`` with no patient on both sides.

    The split is the first fold of a shuffled ``StratifiedGroupKFold`` with
    ``round(1 / fraction)`` folds, or a ``GroupShuffleSplit`` when there are too few
    patients for that many folds. Afterwards, a class that landed only in validation
    has one of its validation patients moved to the fit side, so every class of the
    pool can be learnt; validation is never left empty (``DataError`` if impossible).
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    n_patients = np.unique(groups).size
    if n_patients < 2:
        raise DataError(
            f"cannot carve a validation split: the training pool has {n_patients} patient(s); "
            "at least 2 are needed"
        )
    fit_idx, val_idx = _first_fold(labels, groups, fraction, seed)
    fit_idx, val_idx = _move_missing_classes_to_fit(labels, groups, fit_idx, val_idx)
    return np.sort(fit_idx).astype(np.int64), np.sort(val_idx).astype(np.int64)


def _first_fold(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int):
    n_splits = max(2, round(1.0 / fraction))
    placeholder = np.zeros((labels.shape[0], 1))
    # sklearn refuses to stratify when every class has fewer members than folds.
    _, class_counts = np.unique(labels, return_counts=True)
    if np.unique(groups).size >= n_splits and class_counts.max() >= n_splits:
        from sklearn.model_selection import StratifiedGroupKFold

        folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            # rare classes are expected; the repair step keeps them on the fit side
            warnings.filterwarnings(
                "ignore", message="The least populated class", category=UserWarning
            )
            return next(folds.split(placeholder, labels, groups))
    from sklearn.model_selection import GroupShuffleSplit

    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    return next(splitter.split(placeholder, labels, groups))


def _move_missing_classes_to_fit(labels, groups, fit_idx, val_idx):
    """Repair a split so the fit side holds every class and validation stays non-empty.

    A class missing from the fit side gets the (alphabetically) first of its validation
    patients moved across. If that empties validation, the first fit patient whose
    images are all of classes held by other fit patients is moved back.
    """
    fit_set, val_set = set(fit_idx.tolist()), set(val_idx.tolist())
    for c in np.unique(labels):
        if not any(labels[i] == c for i in fit_set):
            donor = min(groups[i] for i in val_set if labels[i] == c)
            _move_patient(donor, groups, val_set, fit_set)
    if not val_set:
        spare = _spare_patient(labels, groups, fit_set)
        if spare is None:
            raise DataError(
                "cannot carve a validation split: every patient is needed on the fit side "
                "to keep all classes; the training pool is too small"
            )
        _move_patient(spare, groups, fit_set, val_set)
    return np.fromiter(fit_set, dtype=np.int64), np.fromiter(val_set, dtype=np.int64)


def _move_patient(patient, groups: np.ndarray, source: set[int], dest: set[int]) -> None:
    moved = {i for i in source if groups[i] == patient}
    source -= moved
    dest |= moved


def _spare_patient(labels: np.ndarray, groups: np.ndarray, fit_set: set[int]):
    """First patient (sorted) whose removal leaves every fit class on the fit side."""
    classes_of: dict = {}
    for i in fit_set:
        classes_of.setdefault(groups[i], set()).add(labels[i])
    for patient in sorted(classes_of):
        others = set().union(*(cls for p, cls in classes_of.items() if p != patient))
        if classes_of[patient] <= others:
            return patient
    return None
