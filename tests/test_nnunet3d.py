"""nnU-Net v2 ``3d_fullres`` on sagittal slabs: export, planning, training, slab prediction, configuration errors.

The trained-model tests share one tiny model (6 phantom slabs of 8 x 64 x 64, 1 epoch x 2 iterations on one CPU
thread); nnU-Net's planning and training start child processes, about 2 minutes in all on a busy 2-core CPU, so
they are marked ``slow`` as the 2d end-to-end test is.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from spinesegdiff.data.slabs import Slabs
from spinesegdiff.data.splits import make_patient_folds
from spinesegdiff.errors import InputError, SpineSegDiffError
from spinesegdiff.training import nnunet

NNUNET_MISSING = "nnU-Net v2 is an optional extra: pip install 'spinesegdiff[nnunet]'"
DEPTH, SIZE = 8, 64


def _phantom_slabs(count: int = 6) -> Slabs:
    """``count`` slabs of 8 x 64 x 64: a canal band (1), three vertebrae (2) with discs (3) between them.

    Each case shifts the anatomy by a pixel or two, so the cases differ; intensities follow the class.
    """
    labels = np.zeros((count, DEPTH, SIZE, SIZE), dtype=np.uint8)
    for case in range(count):
        shift = case % 3
        labels[case, 1:7, 4:60, 40 + shift:46 + shift] = 1  # canal: a vertical band
        for top in (6, 24, 42):
            labels[case, 1:7, top + shift:top + shift + 12, 14:36] = 2  # vertebral bodies
            labels[case, 2:6, top + shift + 12:top + shift + 18, 16:34] = 3  # discs below them
    intensity = np.array([20, 230, 90, 160], dtype=np.uint8)
    noise = np.random.default_rng(0).integers(0, 15, labels.shape, dtype=np.uint8)
    images = intensity[labels] + noise
    cases = [f"{case + 1}_t2_SPACE" for case in range(count)]
    return Slabs(images=images, labels=labels, cases=cases, patients=[str(c + 1) for c in range(count)],
                 central=np.full(count, DEPTH // 2, dtype=np.int64))


@pytest.mark.parametrize("configuration", ["3d", "3d_lowres", "2D", ""])
def test_unknown_configurations_are_refused(configuration: str, tmp_path: Path) -> None:
    folders = nnunet.NnUNetFolders(tmp_path)
    with pytest.raises(ValueError, match="unknown nnU-Net configuration"):
        nnunet.plan_and_preprocess(990, folders, configuration=configuration)
    with pytest.raises(ValueError, match="unknown nnU-Net configuration"):
        nnunet.train_fold(990, 0, folders, configuration=configuration)
    with pytest.raises(ValueError, match="unknown nnU-Net configuration"):
        nnunet.model_folder(990, folders, configuration)


def test_model_folder_names_the_configuration(tmp_path: Path) -> None:
    folders = nnunet.NnUNetFolders(tmp_path)
    assert nnunet.model_folder_name("3d_fullres") == "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folders.results / "Dataset990_Slabs" / "nnUNetTrainer__nnUNetPlans__2d").mkdir(parents=True)
    assert nnunet.model_folder(990, folders).name.endswith("__2d")
    with pytest.raises(SpineSegDiffError, match="no nnU-Net 3d_fullres model of dataset 990"):
        nnunet.model_folder(990, folders, "3d_fullres")
    with pytest.raises(ValueError, match="threads must be at least 1"):
        nnunet.train_fold(990, 0, folders, configuration="3d_fullres", threads=0)


def test_slab_export_writes_one_volume_per_slab(tmp_path: Path) -> None:
    import SimpleITK as sitk

    slabs = _phantom_slabs()
    folders = nnunet.NnUNetFolders(tmp_path)
    split = make_patient_folds(slabs.cases, num_folds=3, seed=12345)
    dataset = nnunet.export_slab_dataset(slabs, folders, dataset_id=991, name="Slabs", split=split)
    image = sitk.ReadImage(str(dataset / "imagesTr" / "2_t2_SPACE_0000.nii.gz"))
    assert image.GetSize() == (SIZE, SIZE, DEPTH)  # ITK order (x, y, z): the slab's D is the third axis
    assert image.GetSpacing() == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), slabs.images[1])
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "labelsTr" / "2_t2_SPACE.nii.gz")))
    np.testing.assert_array_equal(label, slabs.labels[1])
    written = json.loads((folders.preprocessed / dataset.name / "splits_final.json").read_text(encoding="utf-8"))
    assert written == [{"train": fold["train"], "val": fold["test"]} for fold in split]
    assert json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))["numTraining"] == len(slabs)
    with pytest.raises(ValueError, match=r"expected slabs \(N, D, H, W\)"):
        nnunet.export_slab_dataset(Slabs(slabs.images[:, 0], slabs.labels[:, 0], slabs.cases, slabs.patients,
                                         slabs.central), folders, dataset_id=992)
    bad = slabs.labels.copy()
    bad[0, 0, 0, 0] = 5
    with pytest.raises(ValueError, match="0..3"):
        nnunet.export_slab_dataset(Slabs(slabs.images, bad, slabs.cases, slabs.patients, slabs.central), folders,
                                   dataset_id=992)


def test_nnunet_reads_the_slab_export_as_one_channel_3d_volume(tmp_path: Path) -> None:
    pytest.importorskip("nnunetv2", reason=NNUNET_MISSING)
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    slabs = _phantom_slabs()
    dataset = nnunet.export_slab_dataset(slabs, nnunet.NnUNetFolders(tmp_path), dataset_id=993, name="Slabs")
    verify_dataset_integrity(str(dataset), num_processes=1)  # raises on any problem
    data, properties = SimpleITKIO().read_images([str(dataset / "imagesTr" / "1_t2_SPACE_0000.nii.gz")])
    assert data.shape == (1, DEPTH, SIZE, SIZE)
    assert list(properties["spacing"]) == [1.0, 1.0, 1.0]


@pytest.fixture(scope="module")
def trained_3d(tmp_path_factory) -> Path:
    """A 3d_fullres model of the phantom slabs: planned, and trained 1 epoch x 2 iterations on one CPU thread."""
    pytest.importorskip("nnunetv2", reason=NNUNET_MISSING)
    root = tmp_path_factory.mktemp("nnunet3d")
    folders = nnunet.NnUNetFolders(root / "nnunet")
    slabs = _phantom_slabs()
    split = make_patient_folds(slabs.cases, num_folds=3, seed=12345)
    nnunet.export_slab_dataset(slabs, folders, dataset_id=994, name="Slabs", split=split)
    nnunet.plan_and_preprocess(994, folders, processes=1, log=root / "plan.log", configuration="3d_fullres")
    return nnunet.train_fold(994, 0, folders, epochs=1, iterations=2, log=root / "train.log",
                             configuration="3d_fullres", threads=1)


@pytest.mark.slow  # nnU-Net's planning and training child processes: about 2 minutes here
def test_trained_3d_model_predicts_central_slice_probabilities(trained_3d: Path) -> None:
    from spinesegdiff.pipelines.nnunet import NnUNetSlabSegmenter

    assert trained_3d.name == "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert (trained_3d / "fold_0" / "checkpoint_final.pth").is_file()
    slabs = _phantom_slabs(2)
    segmenter = NnUNetSlabSegmenter(trained_3d, fold=0, device="cpu")
    probabilities = segmenter(slabs.images, np.array([DEPTH // 2, 1]))
    assert probabilities.shape == (2, 4, SIZE, SIZE) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
    assert probabilities.min() >= 0.0
    with pytest.raises(ValueError, match="one index in 0..7 per slab"):
        segmenter(slabs.images, np.array([DEPTH, 0]))
    with pytest.raises(ValueError, match=r"must be \(N, D, H, W\)"):
        segmenter(slabs.images[:, 0], np.array([0, 0]))


@pytest.mark.slow  # nnU-Net's planning and training child processes: about 2 minutes here
def test_models_of_the_other_dimension_are_refused(trained_3d: Path, tmp_path: Path) -> None:
    from spinesegdiff.pipelines.nnunet import NnUNetPresegmenter, NnUNetSlabSegmenter

    with pytest.raises(InputError, match="an nnU-Net 3d_fullres model; the slice presegmenter needs a 2D model"):
        NnUNetPresegmenter(trained_3d, fold=0)
    named_2d = shutil.copytree(trained_3d, tmp_path / "nnUNetTrainer__nnUNetPlans__2d")
    with pytest.raises(InputError, match="an nnU-Net 2d model; the slab segmenter needs a 3D model"):
        NnUNetSlabSegmenter(named_2d, fold=0)
    renamed = shutil.copytree(trained_3d, tmp_path / "my_model")  # no configuration in the name: the plans decide
    with pytest.raises(InputError, match="an nnU-Net 3d model; the slice presegmenter needs a 2D model"):
        NnUNetPresegmenter(renamed, fold=0)
    assert NnUNetSlabSegmenter(renamed, fold=0).predictor is not None
