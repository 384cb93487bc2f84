from __future__ import annotations

from pathlib import Path

import pytest

from spinesegdiff.data.spider import PATHOLOGIES, contrasts_of, find_cases, join_metadata, pathology_flags
from spinesegdiff.errors import InputError


def test_shared_subset_is_found(spider_subset: Path) -> None:
    cases = find_cases(spider_subset)
    assert len(cases) == 33
    assert {c.contrast for c in cases} == {"t2_SPACE"}
    assert all(c.mask_path is not None and c.mask_path.exists() for c in cases)
    assert [int(c.patient_id) for c in cases] == sorted(int(c.patient_id) for c in cases)
    with pytest.raises(InputError, match="no SPIDER series of contrast set T1w"):
        find_cases(spider_subset, contrast_set="T1w")
    with pytest.raises(InputError, match="no SPIDER series of contrast set T2w"):
        find_cases(spider_subset, contrast_set="T2w", include_t2_space=False)


def test_contrast_sets(make_spider_folder) -> None:
    root = make_spider_folder([("1", "t1"), ("1", "t2"), ("2", "t2"), ("3", "t2_SPACE")], shape=(2, 32, 32))
    assert [c.case_id for c in find_cases(root, contrast_set="T1w")] == ["1_t1"]
    assert [c.case_id for c in find_cases(root, contrast_set="T2w")] == ["1_t2", "2_t2", "3_t2_SPACE"]
    assert [c.case_id for c in find_cases(root, contrast_set="T2w", include_t2_space=False)] == [
        "1_t2",
        "2_t2",
    ]
    assert len(find_cases(root, contrast_set="T1w+T2w")) == 4
    assert contrasts_of("T1w+T2w") == ("t1", "t2", "t2_SPACE")
    with pytest.raises(ValueError, match="contrast set must be one of"):
        contrasts_of("PD")


def test_missing_mask_and_empty_folder(make_spider_folder, tmp_path: Path) -> None:
    root = make_spider_folder([("1", "t2"), ("2", "t2")], shape=(2, 32, 32))
    (root / "masks" / "2_t2.mha").unlink()
    with pytest.raises(InputError, match=r"2_t2.mha: mask missing for image 2_t2.mha"):
        find_cases(root)
    assert [c.mask_path for c in find_cases(root, require_masks=False)][1] is None
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(InputError, match="no SPIDER series"):
        find_cases(tmp_path / "empty")
    with pytest.raises(InputError, match="not a SPIDER folder"):
        find_cases(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such data folder"):
        find_cases(tmp_path / "absent")


def test_pathology_flags_rule(tmp_path: Path) -> None:
    csv = tmp_path / "gradings.csv"
    header = (
        "Patient,IVD label,Modic,UP endplate,LOW endplate,Spondylolisthesis,Disc herniation,"
        "Disc narrowing,Disc bulging,Pfirrman grade\n"
    )
    csv.write_text(header + "1,1,0,0,0,0,0,0,0,3\n1,2,2,0,1,0,0,1,0,4\n2,1,0,0,0,1,0,0,1,2\n")
    flags = pathology_flags(csv)
    assert set(flags) == {"1", "2"}
    assert flags["1"] == {
        "modic": True,
        "upper_endplate": False,
        "lower_endplate": True,
        "spondylolisthesis": False,
        "disc_herniation": False,
        "disc_narrowing": True,
        "disc_bulging": False,
        "degeneration": True,
    }
    assert flags["2"]["spondylolisthesis"] and flags["2"]["disc_bulging"] and not flags["2"]["degeneration"]
    csv.write_text(header + "1,1,x,0,0,0,0,0,0,3\n")
    with pytest.raises(InputError, match="line 2: cannot read gradings"):
        pathology_flags(csv)


def test_real_metadata_join(spider_subset: Path, spider_metadata: Path) -> None:
    rows = join_metadata(find_cases(spider_subset), spider_metadata)
    assert len(rows) == 33
    assert all(row[name] is not None for row in rows for name in PATHOLOGIES)
    assert {row["sex"] for row in rows} <= {"F", "M"}
    flags = pathology_flags(spider_metadata / "radiological_gradings.csv")
    assert len(flags) == 218
    assert 0 < sum(f["degeneration"] for f in flags.values()) < 218
