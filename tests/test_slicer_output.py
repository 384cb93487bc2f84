"""``--format seg.nrrd``: a 3D Slicer segmentation with one named, coloured segment per structure (issue 15).

Read back with pynrrd (and, for the geometry, with SimpleITK's own NRRD reader): segment names, colours and
label values from the shipped label table, the scan's grid, and labels equal to the NIfTI output voxel for voxel.
"""

from __future__ import annotations

import json

import nrrd
import numpy as np
import pytest

from spinesegdiff.data.io import Geometry, read_image, write_image
from spinesegdiff.data.label_table import LABEL_TABLE_FILE, label_table, parse_label_table, read_label_table
from spinesegdiff.data.labels import CLASS_NAMES, STRUCTURE_ABBREVIATIONS, STRUCTURE_NAMES
from spinesegdiff.data.phantom import make_phantom
from spinesegdiff.data.slicer import write_slicer_segmentation
from spinesegdiff.errors import InputError
from spinesegdiff.models import ModelConfig, build_model
from spinesegdiff.models.checkpoint import save_checkpoint
from spinesegdiff.pipelines.predict import output_suffix, write_outputs
from spinesegdiff.pipelines.settings import OUTPUT_FORMATS, SamplerSettings, uncertainty_suffix

OBLIQUE = Geometry(spacing=(0.6, 0.7, 3.5), origin=(-12.5, 40.25, 101.0),
                   direction=tuple(np.array([[0.0, 0.6, 0.8], [0.0, 0.8, -0.6], [-1.0, 0.0, 0.0]]).ravel()))
"""A grid that is not axis-aligned: columns run inferior, rows and slices tilted in the axial plane."""


def _segments(header: dict) -> dict[int, dict[str, str]]:
    """``{label value: {field: value}}`` from the ``Segment{i}_*`` fields of a read header."""
    segments: dict[int, dict[str, str]] = {}
    for key, value in header.items():
        if key.startswith("Segment") and "_" in key and key[7].isdigit():
            index, field = key[7:].split("_", 1)
            segments.setdefault(int(index), {})[field] = value
    return {int(fields["LabelValue"]): fields for fields in segments.values()}


# --- the label table ---------------------------------------------------------------------------------------


def test_label_table_agrees_with_the_label_codes():
    table = label_table()
    assert table.background == 0 and CLASS_NAMES[0] == "background"
    assert table.names == STRUCTURE_NAMES
    assert tuple(s.abbreviation for s in table.structures) == STRUCTURE_ABBREVIATIONS
    assert [s.value for s in table.structures] == [1, 2, 3]
    assert [s.colour for s in table.structures] == ["#f6c445", "#4fa3e0", "#e8575a"]
    assert [s.snomed_code for s in table.structures] == ["61853006", "51282000", "360499006"]
    assert table.by_value(3).name == "intervertebral disc"
    with pytest.raises(KeyError, match="no structure has label value 4"):
        table.by_value(4)


def test_label_table_is_frozen_and_validated():
    table = label_table()
    with pytest.raises(AttributeError):
        table.structures[0].name = "cord"  # type: ignore[misc]
    data = json.loads(LABEL_TABLE_FILE.read_text(encoding="utf-8"))
    data["structures"][1]["colour"] = "blue"
    with pytest.raises(ValueError, match="vertebra.*colour must read #rrggbb, got 'blue'"):
        parse_label_table(data)
    data = json.loads(LABEL_TABLE_FILE.read_text(encoding="utf-8"))
    data["structures"][2]["value"] = 1
    with pytest.raises(ValueError, match=r"distinct, increasing .* got \[1, 2, 1\]"):
        parse_label_table(data)
    del data["structures"][0]["snomed"]
    with pytest.raises(ValueError, match="lacks the field 'snomed'"):
        parse_label_table(data)


def test_label_table_reads_from_any_file(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(LABEL_TABLE_FILE.read_text(encoding="utf-8").replace("spinal canal", "canal"))
    assert read_label_table(path).names[0] == "canal"


# --- the writer ---------------------------------------------------------------------------------------------


def test_segmentation_file_names_colours_and_labels(tmp_path):
    phantom = make_phantom(shape=(3, 96, 80), spacing=(1.5, 1.5, 3.0), seed=1)
    path = write_slicer_segmentation(tmp_path / "a.seg.nrrd", phantom.labels, OBLIQUE)
    data, header = nrrd.read(str(path), index_order="C")
    np.testing.assert_array_equal(data, phantom.labels)
    assert data.dtype == np.uint8 and header["dimension"] == 3
    assert header["Segmentation_MasterRepresentation"] == "Binary labelmap"
    assert "Binary labelmap" in header["Segmentation_ContainedRepresentationNames"].split("|")
    segments = _segments(header)
    assert sorted(segments) == [1, 2, 3]
    for structure in label_table().structures:
        fields = segments[structure.value]
        assert fields["Name"] == structure.name
        assert fields["Layer"] == "0"
        assert fields["Extent"] == "0 79 0 95 0 2"
        np.testing.assert_allclose([float(c) for c in fields["Color"].split()], structure.rgb, atol=1e-5)
        assert f"SCT^{structure.snomed_code}^" in fields["Tags"]
    assert segments[1]["Color"].split() == ["0.964706", "0.768627", "0.270588"]  # #f6c445


def test_segmentation_file_sits_on_the_scans_grid(tmp_path):
    """Space directions are spacing times the direction columns in LPS, the origin the centre of voxel 0: pynrrd
    reads them so, and ITK's own NRRD reader gives back the very geometry written."""
    labels = np.zeros((4, 6, 5), np.uint8)
    labels[1, 2, 3] = 2
    path = write_slicer_segmentation(tmp_path / "b.seg.nrrd", labels, OBLIQUE)
    _, header = nrrd.read(str(path), index_order="C")
    assert header["space"] == "left-posterior-superior"
    assert list(header["sizes"]) == [5, 6, 4]
    expected = (OBLIQUE.direction_matrix * np.asarray(OBLIQUE.spacing)).T
    np.testing.assert_allclose(header["space directions"], expected, atol=1e-9)
    np.testing.assert_allclose(header["space directions"][0], [0.0, 0.0, -0.6], atol=1e-9)  # columns go down
    np.testing.assert_allclose(header["space directions"][2], [2.8, -2.1, 0.0], atol=1e-9)  # 3.5 * (0.8, -0.6, 0)
    np.testing.assert_allclose(header["space origin"], OBLIQUE.origin, atol=1e-9)
    array, geometry = read_image(path)
    assert geometry.allclose(OBLIQUE, atol=1e-6)
    np.testing.assert_array_equal(array, labels)


def test_segmentation_refuses_unknown_labels_and_2d(tmp_path):
    labels = np.zeros((2, 3, 4), np.uint8)
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"label values \[7\] are not in the label table"):
        write_slicer_segmentation(tmp_path / "c.seg.nrrd", labels, OBLIQUE)
    with pytest.raises(ValueError, match="needs a 3D label map, got 2D"):
        write_slicer_segmentation(tmp_path / "c.seg.nrrd", labels[0], OBLIQUE)
    assert not list(tmp_path.iterdir())


# --- predict's outputs --------------------------------------------------------------------------------------


def test_seg_nrrd_is_an_output_format():
    assert ".seg.nrrd" in OUTPUT_FORMATS
    assert output_suffix(None, "seg.nrrd") == ".seg.nrrd"
    assert uncertainty_suffix(".seg.nrrd") == ".nrrd"
    assert [uncertainty_suffix(f) for f in OUTPUT_FORMATS[:4]] == list(OUTPUT_FORMATS[:4])
    with pytest.raises(InputError, match="output format 'seg' is not one of"):
        output_suffix(None, "seg")


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """The phantom scan segmented once by an untrained tiny network (outputs, not accuracy, are under test)."""
    import spinesegdiff.pipelines.predict as predict_module

    folder = tmp_path_factory.mktemp("scan")
    config = ModelConfig(variant="spinesegdiff", widths=(8, 8, 16), time_embed_dim=32, patch_size=2)
    net = build_model(config)
    model = save_checkpoint(folder / "tiny.pt", {
        "model_config": config.to_dict(), "train_config": {"schedule": "linear"},
        "scheduler": {"schedule": "linear", "num_train_timesteps": 1000},
        "model": net.state_dict(), "ema": net.state_dict()})
    phantom = make_phantom(shape=(3, 160, 120), spacing=(1.5, 1.5, 3.0), seed=2)
    scan = write_image(folder / "case.nii.gz", (phantom.image * 800).astype(np.int16), phantom.geometry)
    settings = SamplerSettings(num_samples=1, num_steps=1, fuse_steps=1, backend="torch")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predict_module, "check_spine_quality", lambda *args, **kwargs: None)
        return predict_module.segment(scan, model=model, device="cpu", settings=settings, quiet=True,
                                      preseg="none")


def test_predict_writes_a_slicer_segmentation_equal_to_the_nifti_labels(segmented, tmp_path):
    nifti = write_outputs(segmented, tmp_path / "nii", output_format="nii.gz")
    slicer = write_outputs(segmented, tmp_path / "seg", output_format="seg.nrrd")
    assert slicer["segmentation"].name == "case_seg.seg.nrrd"
    assert slicer["uncertainty"].name == "case_uncertainty.nrrd"
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == sorted(p.name for p in slicer.values())
    assert json.loads(slicer["report"].read_text(encoding="utf-8"))["outputs"]["segmentation"] == "case_seg.seg.nrrd"
    labels, geometry = read_image(nifti["segmentation"])
    data, header = nrrd.read(str(slicer["segmentation"]), index_order="C")
    np.testing.assert_array_equal(data, labels)
    np.testing.assert_array_equal(data, segmented.labels)
    assert geometry.allclose(segmented.geometry)
    np.testing.assert_allclose(header["space origin"], segmented.geometry.origin, atol=1e-6)
    assert sorted(_segments(header)) == [1, 2, 3]
    uncertainty, uncertainty_geometry = read_image(slicer["uncertainty"])
    reference, _ = read_image(nifti["uncertainty"])
    np.testing.assert_allclose(uncertainty, reference, atol=1e-6)
    assert uncertainty.dtype.kind == "f" and uncertainty_geometry.allclose(segmented.geometry)
