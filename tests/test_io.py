from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from spinesegdiff.data.io import Geometry, check_same_grid, image_stem, read_image, write_image
from spinesegdiff.errors import InputError, MissingInputError

OBLIQUE = Geometry(
    spacing=(0.7, 0.9, 3.3),
    origin=(-12.5, 40.25, 7.0),
    direction=tuple(
        np.linalg.qr(np.array([[0.1, 0.2, -1.0], [1.0, 0.05, 0.1], [0.02, -1.0, 0.3]]))[0].ravel().tolist()
    ),
)


@pytest.mark.parametrize("suffix", [".mha", ".nii.gz", ".nii", ".nrrd"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_round_trip_is_exact(tmp_path: Path, suffix: str, dtype) -> None:
    rng = np.random.default_rng(0)
    array = (rng.random((4, 6, 5)) * 100).astype(dtype)
    path = write_image(tmp_path / f"scan{suffix}", array, OBLIQUE)
    back, geometry = read_image(path)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    assert geometry.allclose(OBLIQUE, atol=1e-5)
    assert list(tmp_path.iterdir()) == [path], "no temporary file may be left behind"


def test_real_tptbox_nifti_round_trip(tptbox_sample: Path, tmp_path: Path) -> None:
    source = tptbox_sample / "sub-mri_label-6_T2w.nii.gz"
    array, geometry = read_image(source)
    assert array.shape == (67, 52, 68)  # SimpleITK order (z, y, x) of a 68 x 52 x 67 volume
    assert geometry.spacing == pytest.approx((1.5, 1.5, 1.5))
    for suffix in (".nii.gz", ".mha", ".nrrd"):
        back, back_geometry = read_image(write_image(tmp_path / f"copy{suffix}", array, geometry))
        np.testing.assert_array_equal(back, array)
        assert back_geometry.allclose(geometry, atol=1e-5)
    reference = sitk.ReadImage(str(source))
    assert geometry.origin == pytest.approx(reference.GetOrigin())


def _write_dicom_series(folder: Path, array: np.ndarray, geometry: Geometry) -> None:
    folder.mkdir()
    volume = sitk.GetImageFromArray(array)
    geometry.apply_to(volume)
    direction = geometry.direction
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(array.shape[0]):
        plane = volume[:, :, k]
        origin = volume.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "MR",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1.42",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.43",
            "0020|0037": "\\".join(
                f"{v:.10f}"
                for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])
            ),
            "0020|0032": "\\".join(f"{v:.10f}" for v in origin),
            "0020|0013": str(k + 1),
            "0028|0030": f"{geometry.spacing[1]:.6f}\\{geometry.spacing[0]:.6f}",
            "0018|0050": f"{geometry.spacing[2]:.6f}",
        }
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)


def test_dicom_series_folder(tmp_path: Path) -> None:
    geometry = Geometry(
        spacing=(0.8, 0.8, 3.0),
        origin=(10.0, -20.0, 5.0),
        direction=(0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    )
    array = (np.random.default_rng(1).random((6, 12, 10)) * 1000).astype(np.int16)
    _write_dicom_series(tmp_path / "dicom", array, geometry)
    back, back_geometry = read_image(tmp_path / "dicom")
    np.testing.assert_array_equal(back, array)
    assert back_geometry.allclose(geometry, atol=1e-3)
    assert image_stem(tmp_path / "dicom") == "dicom"


def test_missing_path_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.mha: no such file"):
        read_image(tmp_path / "nope.mha")
    assert issubclass(MissingInputError, FileNotFoundError)


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    fake = tmp_path / "notes.mha"
    fake.write_text("this is not an image")
    with pytest.raises(InputError, match=r"notes.mha: not a readable image"):
        read_image(fake)


def test_unsupported_suffix(tmp_path: Path) -> None:
    other = tmp_path / "scan.png.txt"
    other.write_text("x")
    with pytest.raises(InputError, match="unsupported file type"):
        read_image(other)


def test_2d_image_where_volume_expected(tmp_path: Path) -> None:
    flat = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9), np.uint8)), str(flat))
    with pytest.raises(InputError, match=r"flat.nii.gz: image is 2D, a 3D volume is expected"):
        read_image(flat)


def test_empty_folder_is_not_a_dicom_series(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: folder holds no DICOM series"):
        read_image(tmp_path / "empty")


def test_write_refuses_unknown_format_and_leaves_nothing(tmp_path: Path) -> None:
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    with pytest.raises(ValueError, match="cannot tell the image format"):
        write_image(tmp_path / "out.xyz", np.zeros((2, 2, 2), np.uint8), geometry)
    with pytest.raises(ValueError, match="array is 2D"):
        write_image(tmp_path / "out.mha", np.zeros((2, 2), np.uint8), geometry)
    assert list(tmp_path.iterdir()) == []


def test_image_and_mask_must_share_the_grid(tmp_path: Path) -> None:
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    moved = Geometry((1.0, 1.0, 1.0), (0.0, 5.0, 0.0), geometry.direction)
    image = (np.zeros((2, 3, 4)), geometry)
    with pytest.raises(InputError, match=r"mask.mha: mask shape \(2, 3, 5\) differs from image img.mha"):
        check_same_grid("img.mha", image, "mask.mha", (np.zeros((2, 3, 5)), geometry))
    with pytest.raises(InputError, match="mask.mha: mask geometry differs from image img.mha"):
        check_same_grid("img.mha", image, "mask.mha", (np.zeros((2, 3, 4)), moved))
    check_same_grid("img.mha", image, "mask.mha", (np.zeros((2, 3, 4)), geometry))


def test_geometry_validation_and_dict_round_trip() -> None:
    assert Geometry.from_dict(OBLIQUE.to_dict()) == OBLIQUE
    with pytest.raises(ValueError, match="spacing must be positive"):
        Geometry((0.0, 1.0, 1.0), (0.0, 0.0, 0.0), OBLIQUE.direction)
    with pytest.raises(ValueError, match="needs 3 origin values"):
        Geometry((1.0, 1.0, 1.0), (0.0, 0.0), OBLIQUE.direction)


def test_capital_endings_are_written_and_read_in_their_format(tmp_path: Path) -> None:
    geometry = Geometry(spacing=(0.5, 0.6, 3.0), origin=(1.0, 2.0, 3.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))
    array = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    for name in ("SCAN.MHA", "SCAN.NII.GZ", "SCAN.NRRD"):
        write_image(tmp_path / name, array, geometry)
        assert (tmp_path / name).stat().st_size > 0
        read, read_geometry = read_image(tmp_path / name)
        np.testing.assert_array_equal(read, array)
        assert read_geometry.allclose(geometry, atol=1e-5)
