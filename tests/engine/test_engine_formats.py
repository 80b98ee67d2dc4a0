"""Decoding well-formed uploads: npz and ImageFolder archives."""

from __future__ import annotations

import io
import tarfile
import zipfile

import numpy as np
import pytest
from engine_helpers import ARCHIVE_WRITERS, png_bytes, random_images

from worker.engine.data.arrays import DatasetArrays
from worker.engine.data.formats import DatasetFormatError, dataset_format, load_dataset_file

# --- npz ----------------------------------------------------------------------------------


def write_npz(tmp_path, **arrays):
    path = tmp_path / "upload.npz"
    np.savez(path, **arrays)
    return path


def load(path):
    return load_dataset_file(path, path.name)


def test_npz_grey_images_round_trip(tmp_path):
    x_train, x_test = random_images(6, (5, 4)), random_images(3, (5, 4), seed=1)
    path = write_npz(tmp_path, x_train=x_train, y_train=np.array([0, 1, 2, 0, 1, 2]),
                     x_test=x_test, y_test=np.array([2, 1, 0], dtype=np.int32))
    data = load(path)
    assert data.x_train.shape == (6, 5, 4, 1) and data.x_train.dtype == np.uint8
    np.testing.assert_array_equal(data.x_train[..., 0], x_train)
    np.testing.assert_array_equal(data.x_test[..., 0], x_test)
    assert data.y_test.dtype == np.int64 and data.y_test.tolist() == [2, 1, 0]
    assert data.classes == ["0", "1", "2"]
    assert data.ids_train == ["0", "1", "2", "3", "4", "5"]
    assert data.subjects_train is None
    assert data.input_shape == (1, 5, 4)


def test_npz_features_ids_and_subjects(tmp_path):
    path = write_npz(
        tmp_path, x_train=np.arange(12, dtype=np.float64).reshape(4, 3),
        y_train=np.array([0, 1, 1, 0]), x_test=np.ones((2, 3)), y_test=np.array([1, 0]),
        ids_train=np.array(["a", "b", "c", "d"]),
        subjects_train=np.array(["alice", "", "bob", "alice"]))
    data = load(path)
    assert data.x_train.dtype == np.float32 and data.input_shape == (3,)
    assert data.ids_train == ["a", "b", "c", "d"]
    assert data.subjects_train == ["alice", None, "bob", "alice"]


def test_npz_survives_the_arrays_cache(tmp_path):
    data = load(write_npz(tmp_path, x_train=random_images(4, (3, 3, 3)),
                          y_train=np.array([0, 1, 0, 1]), x_test=random_images(2, (3, 3, 3)),
                          y_test=np.array([1, 0])))
    data.save(tmp_path / "arrays.safetensors")
    again = DatasetArrays.load(tmp_path / "arrays.safetensors")
    np.testing.assert_array_equal(again.x_train, data.x_train)
    assert again.ids_train == data.ids_train and again.classes == data.classes


@pytest.mark.parametrize(("change", "complaint"), [
    ({"y_train": np.array([0.0, 1.0, 0.0, 1.0])}, "labels must be integers"),
    ({"y_train": np.array([0, -1, 0, 1])}, r"labels must lie in \[0"),
    ({"y_test": np.array([0, 2])}, "y_test has label 2"),
    ({"y_train": np.array([0, 2, 0, 2])}, "classes 1 have no training sample"),
    ({"y_train": np.array([0, 0, 0, 0]), "y_test": np.array([0, 0])}, "at least 2 classes"),
    ({"y_train": np.array([0, 1, 0])}, "y_train must hold 4 labels"),
    ({"ids_train": np.array(["a", "b", "a", "c"])}, "id 'a' appears more than once"),
    ({"ids_train": np.array([1, 2, 3, 4])}, "ids_train must be 4 strings"),
    ({"x_test": np.zeros((2, 5), np.float32)}, "x_test rows are"),
    ({"x_train": np.full((4, 3), np.nan)}, "finite"),
    ({"x_train": np.zeros((4, 3, 3), np.float32)}, "images must be uint8"),
])
def test_npz_rejections(tmp_path, change, complaint):
    arrays = {"x_train": np.zeros((4, 3), np.float32), "y_train": np.array([0, 1, 0, 1]),
              "x_test": np.zeros((2, 3), np.float32), "y_test": np.array([1, 0]), **change}
    with pytest.raises(DatasetFormatError, match=complaint):
        load(write_npz(tmp_path, **arrays))


def test_npz_one_huge_label_is_not_a_huge_number_of_classes(tmp_path):
    # A label of 99999 among 20 rows once made a 100,000-class dataset.
    path = write_npz(tmp_path, x_train=np.zeros((20, 3), np.float32),
                     y_train=np.array([0, 1] * 9 + [1, 99999]), x_test=np.zeros((2, 3)),
                     y_test=np.array([0, 1]))
    with pytest.raises(DatasetFormatError, match=r"classes must be 0..K-1 with every class in "
                       r"the training split; labels go up to 99999 but classes 2, 3, 4, 5, 6, "
                       r"7, 8, 9, 10, 11 and 99987 more have no training sample"):
        load(path)


def test_npz_missing_arrays(tmp_path):
    with pytest.raises(DatasetFormatError, match="missing arrays: x_test, y_test"):
        load(write_npz(tmp_path, x_train=np.zeros((2, 3)), y_train=np.array([0, 1])))


def test_export_digits(digits_path, digits):
    assert digits.x_train.shape == (1437, 8, 8, 1) and digits.x_test.shape == (360, 8, 8, 1)
    assert digits.x_train.max() == 255 and digits.classes == [str(i) for i in range(10)]
    # Stratified: every class keeps its share of the test split.
    test_share = np.bincount(digits.y_test) / np.bincount(digits.y_train)
    assert np.all(np.abs(test_share - 0.25) < 0.02)


@pytest.mark.parametrize(("filename", "fmt"), [
    ("d.npz", "npz"), ("D.ZIP", "zip"), ("d.tar", "tar"), ("d.tar.gz", "tar.gz"),
    ("d.tgz", "tar.gz"),
])
def test_dataset_format(filename, fmt):
    assert dataset_format(filename) == fmt


# --- ImageFolder ---------------------------------------------------------------------------

def colour(label: int, index: int) -> tuple[int, int, int]:
    return (label * 50, index, 200)


IMAGES = {  # shuffled on purpose: ids must come out sorted whatever the archive order
    "train/dog/b.png": (1, 0), "train/cat/2.png": (0, 2), "train/cat/1.png": (0, 1),
    "train/dog/a.png": (1, 1), "train/emu/x.png": (2, 0), "test/dog/t1.png": (1, 7),
    "test/cat/t0.png": (0, 8),
}
EXTRAS = {
    "__MACOSX/train/cat/._1.png": b"resource fork",
    "train/cat/.DS_Store": b"junk",
    "README.txt": b"ignored",
    "subjects.csv": b"sample_id,subject\ntrain/cat/1.png,alice\ntrain/dog/b.png,bob\n",
}


def image_folder_members() -> dict[str, bytes]:
    members = {name: png_bytes(color=colour(*spec)) for name, spec in IMAGES.items()}
    return {**members, **EXTRAS}


@pytest.mark.parametrize("suffix", list(ARCHIVE_WRITERS))
def test_image_folder(tmp_path, suffix):
    path = ARCHIVE_WRITERS[suffix](tmp_path / f"upload{suffix}", image_folder_members())
    data = load(path)
    assert data.classes == ["cat", "dog", "emu"]
    assert data.ids_train == ["train/cat/1.png", "train/cat/2.png", "train/dog/a.png",
                              "train/dog/b.png", "train/emu/x.png"]
    assert data.y_train.tolist() == [0, 0, 1, 1, 2] and data.y_test.tolist() == [0, 1]
    assert data.x_train.shape == (5, 4, 4, 3) and data.x_train.dtype == np.uint8
    for row, sample_id in enumerate(data.ids_train):
        assert tuple(data.x_train[row, 0, 0]) == colour(*IMAGES[sample_id])
    assert tuple(data.x_test[1, 2, 3]) == colour(1, 7)
    assert data.subjects_train == ["alice", None, None, "bob", None]


@pytest.mark.parametrize("suffix", list(ARCHIVE_WRITERS))
def test_image_folder_spills_to_the_scratch_directory_and_leaves_nothing(tmp_path, suffix):
    path = ARCHIVE_WRITERS[suffix](tmp_path / f"upload{suffix}", image_folder_members())
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    spilled = load_dataset_file(path, path.name, scratch_dir=scratch)
    in_default_temp = load(path)
    np.testing.assert_array_equal(spilled.x_train, in_default_temp.x_train)
    np.testing.assert_array_equal(spilled.x_test, in_default_temp.x_test)
    assert spilled.ids_train == in_default_temp.ids_train
    assert list(scratch.iterdir()) == []  # the spill file never had a name


def test_image_folder_grey_with_directory_entries(tmp_path):
    path = tmp_path / "upload.tar"
    with tarfile.open(path, "w") as tar:
        for directory in ("./train", "./train/0", "./train/1", "./test", "./test/1"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
    members = {f"./{split}/{label}/{i}.png": png_bytes(mode="L", color=label * 100 + i)
               for split, label, i in [("train", 0, 0), ("train", 1, 1), ("test", 1, 2)]}
    with tarfile.open(path, "a") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = load(path)
    assert data.ids_train == ["train/0/0.png", "train/1/1.png"]
    assert data.x_train.shape == (2, 4, 4, 1) and data.x_train[1, 0, 0, 0] == 101


@pytest.mark.parametrize(("change", "complaint"), [
    ({"test/owl/0.png": png_bytes()}, r"test classes \['owl'\] have no training images"),
    ({"train/cat/deeper/0.png": png_bytes()}, "expected train/<class>/<file>"),
    ({"train/0.png": png_bytes()}, "expected train/<class>/<file>"),
    ({"subjects.csv": b"sample_id,subject\ntrain/cat/9.png,x\n"}, "not a training sample"),
    ({"subjects.csv": b"id,who\n"}, "header must be"),
    ({"subjects.csv": b"sample_id,subject\ntrain/cat/1.png,x\ntrain/cat/1.png,y\n"},
     "listed twice"),
])
def test_image_folder_rejections(tmp_path, change, complaint):
    path = ARCHIVE_WRITERS[".zip"](tmp_path / "upload.zip", {**image_folder_members(), **change})
    with pytest.raises(DatasetFormatError, match=complaint):
        load(path)


def test_image_folder_without_test_split(tmp_path):
    members = {name: data for name, data in image_folder_members().items()
               if not name.startswith("test/")}
    with pytest.raises(DatasetFormatError, match="no images under test/"):
        load(ARCHIVE_WRITERS[".zip"](tmp_path / "upload.zip", members))


def test_zip_names_are_normalised(tmp_path):
    path = tmp_path / "upload.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in image_folder_members().items():
            zf.writestr(f"./{name}" if name.startswith("train/cat") else name, data)
    assert load(path).ids_train[:2] == ["train/cat/1.png", "train/cat/2.png"]

