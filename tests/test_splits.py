from __future__ import annotations

import json
from pathlib import Path

import pytest

from spinesegdiff.data.splits import (
    apply_split,
    load_split,
    make_patient_folds,
    patient_folds,
    patient_of,
    save_split,
    validation_patients,
)
from spinesegdiff.errors import InputError

CASES = [f"{p}_{c}" for p in range(1, 24) for c in ("t1", "t2")] + ["7_t2_SPACE", "12_t2_SPACE"]


def test_patient_of_reads_every_naming() -> None:
    assert patient_of("107_t2_SPACE") == "107"
    assert patient_of("SPIDER_007") == "7"
    assert patient_of("SPIDER_007_t1_086") == "7"
    assert patient_of("SPIDER_250_t2_001") == "250"
    with pytest.raises(ValueError, match="cannot read a patient number"):
        patient_of("knee_scan")


def test_folds_are_patient_disjoint_and_cover_every_case() -> None:
    split = make_patient_folds(CASES, num_folds=5, seed=3)
    assert len(split) == 5
    tested = [c for fold in split for c in fold["test"]]
    assert sorted(tested) == sorted(CASES)
    for fold in split:
        train_patients = {patient_of(c) for c in fold["train"]}
        test_patients = {patient_of(c) for c in fold["test"]}
        assert not train_patients & test_patients
        assert sorted(fold["train"] + fold["test"]) == sorted(CASES)
    sizes = [len({patient_of(c) for c in fold["test"]}) for fold in split]
    assert max(sizes) - min(sizes) <= 1


def test_folds_are_deterministic_and_seeded() -> None:
    assert make_patient_folds(CASES, seed=1) == make_patient_folds(list(CASES), seed=1)
    assert make_patient_folds(CASES, seed=1) != make_patient_folds(CASES, seed=2)


def test_bad_fold_count() -> None:
    with pytest.raises(ValueError, match="num_folds must be between 2"):
        make_patient_folds(["1_t1", "2_t1"], num_folds=3)


def test_save_and_load_in_paper_format(tmp_path: Path) -> None:
    split = make_patient_folds(CASES, num_folds=5)
    path = save_split(split, tmp_path / "splits_final.json")
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(raw, list) and set(raw[0]) == {"train", "test"}
    assert load_split(path) == split


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_split(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json: not a JSON file"):
        load_split(bad)
    bad.write_text('{"train": []}')
    with pytest.raises(InputError, match="expected a list"):
        load_split(bad)


def test_patient_in_two_test_folds_is_refused() -> None:
    with pytest.raises(ValueError, match="patient 3 is in the test set of folds 0 and 1"):
        patient_folds([{"train": [], "test": ["3_t1"]}, {"train": [], "test": ["3_t2"]}])


def test_paper_split_applies_to_the_shared_subset(spider_metadata: Path, spider_subset: Path) -> None:
    from spinesegdiff.data.spider import find_cases

    cases = [c.case_id for c in find_cases(spider_subset)]
    for name in ("SPIDER_T2w", "SPIDER_T1wT2w"):
        paper = load_split(spider_metadata / "paper-splits" / name / "splits_final.json")
        ours = apply_split(paper, cases)
        folds = patient_folds(paper)
        for k, fold in enumerate(ours):
            assert all(folds[patient_of(c)] == k for c in fold["test"])
            assert all(folds[patient_of(c)] != k for c in fold["train"])
        assert sorted(c for fold in ours for c in fold["test"]) == sorted(cases)


def test_paper_split_missing_patient() -> None:
    with pytest.raises(InputError, match="patients 9 are in no fold"):
        apply_split([{"train": [], "test": ["SPIDER_001"]}], ["1_t1", "9_t2"])


def test_validation_patients_are_a_seeded_subset() -> None:
    train = make_patient_folds(CASES, num_folds=5)[0]["train"]
    chosen = validation_patients(train, fraction=0.2, seed=4)
    assert chosen <= {patient_of(c) for c in train}
    assert 1 <= len(chosen) < len({patient_of(c) for c in train})
    assert chosen == validation_patients(train, fraction=0.2, seed=4)
