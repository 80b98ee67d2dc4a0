"""Hostile uploads: every trick must end in a DatasetFormatError naming what is wrong."""

from __future__ import annotations

import gzip
import io
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from engine_helpers import ARCHIVE_WRITERS, png_bytes, write_tar, write_zip
from PIL import Image

from worker.engine.data.arrays import DatasetArrays
from worker.engine.data.formats import ArchiveLimits, DatasetFormatError, load_dataset_file

VALID = {"train/a/0.png": png_bytes(), "train/b/1.png": png_bytes(), "test/a/2.png": png_bytes()}


def load(path: Path, limits: ArchiveLimits | None = None):
    return load_dataset_file(path, path.name, limits)


@pytest.mark.parametrize("suffix", list(ARCHIVE_WRITERS))
@pytest.mark.parametrize(("name", "complaint"), [
    ("../evil.png", "'..'"),
    ("train/a/../../../evil.png", "'..'"),
    ("/etc/evil.png", "absolute"),
    ("C:/evil.png", "absolute"),
    ("train\\a\\..\\..\\evil.png", "backslash"),
])
def test_escaping_member_names_are_rejected(tmp_path, suffix, name, complaint):
    path = ARCHIVE_WRITERS[suffix](tmp_path / f"upload{suffix}", {**VALID, name: png_bytes()})
    with pytest.raises(DatasetFormatError, match=complaint) as caught:
        load(path)
    assert repr(name)[1:-1] in str(caught.value)


def test_zip_symlink_is_rejected(tmp_path):
    path = write_zip(tmp_path / "upload.zip", VALID)
    with zipfile.ZipFile(path, "a") as zf:
        link = zipfile.ZipInfo("train/a/link.png")
        link.create_system = 3  # Unix, so external_attr holds st_mode
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DatasetFormatError, match="train/a/link.png.*symbolic links"):
        load(path)


def test_zip_encrypted_member_is_rejected(tmp_path):
    raw = bytearray(write_zip(tmp_path / "plain.zip", VALID).read_bytes())
    # zipfile cannot encrypt; set the "encrypted" bit in the first central directory entry.
    raw[raw.index(b"PK\x01\x02") + 8] |= 0x1
    path = tmp_path / "upload.zip"
    path.write_bytes(bytes(raw))
    with pytest.raises(DatasetFormatError, match="encrypted"):
        load(path)


def _tar_with(tmp_path: Path, special: tarfile.TarInfo, suffix: str = ".tar") -> Path:
    path = write_tar(tmp_path / f"upload{suffix}", VALID, gzipped=suffix == ".tar.gz")
    if suffix == ".tar":
        with tarfile.open(path, "a") as tar:
            tar.addfile(special)
    else:  # tarfile cannot append to a compressed archive: rebuild it
        with tarfile.open(path, "w:gz") as tar:
            tar.addfile(special)
    return path


@pytest.mark.parametrize(("kind", "complaint"), [
    (tarfile.SYMTYPE, "symbolic link"),
    (tarfile.LNKTYPE, "hard link"),
    (tarfile.CHRTYPE, "device"),
    (tarfile.BLKTYPE, "device"),
    (tarfile.FIFOTYPE, "FIFO"),
])
@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_tar_links_and_devices_are_rejected(tmp_path, kind, complaint, suffix):
    special = tarfile.TarInfo("train/a/special.png")
    special.type = kind
    special.linkname = "/etc/passwd"
    with pytest.raises(DatasetFormatError, match=complaint) as caught:
        load(_tar_with(tmp_path, special, suffix))
    assert "train/a/special.png" in str(caught.value)


@pytest.mark.parametrize("suffix", list(ARCHIVE_WRITERS))
def test_too_many_members(tmp_path, suffix):
    members = {f"train/a/{i}.png": png_bytes() for i in range(6)}
    path = ARCHIVE_WRITERS[suffix](tmp_path / f"upload{suffix}", members)
    with pytest.raises(DatasetFormatError, match="more than 5 members"):
        load(path, ArchiveLimits(max_members=5))


@pytest.mark.parametrize("suffix", list(ARCHIVE_WRITERS))
def test_too_many_declared_bytes(tmp_path, suffix):
    path = ARCHIVE_WRITERS[suffix](tmp_path / f"upload{suffix}", VALID)
    with pytest.raises(DatasetFormatError, match="exceeds 100 bytes"):
        load(path, ArchiveLimits(max_bytes=100))


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_compression_bomb(tmp_path, suffix):
    zeros = bytes(8 << 20)  # 8 MiB of zeros compresses about 1000-fold
    path = ARCHIVE_WRITERS[suffix](tmp_path / f"upload{suffix}", {**VALID, "bomb.bin": zeros})
    with pytest.raises(DatasetFormatError, match="zip bomb|decompression bomb"):
        load(path)


def test_gzip_bomb_hidden_in_a_tar_header(tmp_path):
    # A pax header tarfile would read into memory before we see any member.
    pax = tarfile.TarInfo("train/a/0.png")
    pax.pax_headers = {"comment": "x" * (4 << 20)}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(pax, io.BytesIO(b""))
    path = tmp_path / "upload.tar.gz"
    path.write_bytes(gzip.compress(raw.getvalue()))
    with pytest.raises(DatasetFormatError, match="decompression bomb"):
        load(path)


@pytest.mark.parametrize("suffix", list(ARCHIVE_WRITERS))
def test_images_of_different_sizes(tmp_path, suffix):
    members = {**VALID, "train/b/9.png": png_bytes(size=(5, 4))}
    path = ARCHIVE_WRITERS[suffix](tmp_path / f"upload{suffix}", members)
    with pytest.raises(DatasetFormatError, match="one size and mode") as caught:
        load(path)
    assert "train/b/9.png" in str(caught.value)


def test_images_of_different_modes(tmp_path):
    members = {**VALID, "train/b/9.png": png_bytes(mode="L", color=7)}
    with pytest.raises(DatasetFormatError, match="one size and mode"):
        load(write_zip(tmp_path / "upload.zip", members))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("size", [(11, 11), (16, 16)])  # our check, and PIL's at twice the limit
def test_image_over_pixel_limit(tmp_path, size):
    path = write_zip(tmp_path / "upload.zip", {**VALID, "train/b/big.png": png_bytes(size)})
    with pytest.raises(DatasetFormatError, match="train/b/big.png.*exceeds 100 pixels"):
        load(path, ArchiveLimits(max_image_pixels=100))


def test_undecodable_image(tmp_path):
    path = write_zip(tmp_path / "upload.zip", {**VALID, "train/b/x.png": b"not an image"})
    with pytest.raises(DatasetFormatError, match="train/b/x.png.*not a readable image"):
        load(path)


@pytest.mark.parametrize("suffix", [".zip", ".tar", ".tar.gz", ".npz"])
def test_garbage_file(tmp_path, suffix):
    path = tmp_path / f"upload{suffix}"
    path.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    with pytest.raises(DatasetFormatError, match="not a readable"):
        load(path)


def test_unsupported_suffix(tmp_path):
    with pytest.raises(DatasetFormatError, match="unsupported file type"):
        load_dataset_file(tmp_path / "x.rar", "x.rar")


# --- npz ----------------------------------------------------------------------------------

class _Trap:
    """Unpickling this would create a file: proof that pickles were executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _valid_npz_arrays() -> dict[str, np.ndarray]:
    return {"x_train": np.zeros((4, 3), np.float32), "y_train": np.array([0, 1, 0, 1]),
            "x_test": np.zeros((2, 3), np.float32), "y_test": np.array([0, 1])}


def test_npz_object_array_is_rejected_not_unpickled(tmp_path):
    marker = tmp_path / "unpickled"
    trap = np.array([_Trap(marker)] * 4, dtype=object)
    path = tmp_path / "upload.npz"
    np.savez(path, **{**_valid_npz_arrays(), "ids_train": trap})
    with pytest.raises(DatasetFormatError, match="ids_train: object arrays"):
        load(path)
    assert not marker.exists()


def test_npz_header_claiming_more_than_it_holds(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 3)})
    path = tmp_path / "upload.npz"
    with zipfile.ZipFile(path, "w") as zf:
        for key, array in _valid_npz_arrays().items():
            if key != "x_train":
                buffer = io.BytesIO()
                np.save(buffer, array)
                zf.writestr(f"{key}.npy", buffer.getvalue())
        zf.writestr("x_train.npy", header.getvalue() + bytes(48))
    with pytest.raises(DatasetFormatError, match="x_train: header claims"):
        load(path)


def test_npz_limits_apply(tmp_path):
    path = tmp_path / "upload.npz"
    np.savez(path, **_valid_npz_arrays())
    with pytest.raises(DatasetFormatError, match="exceeds 64 bytes"):
        load(path, ArchiveLimits(max_bytes=64))


def truncated_png(size: tuple[int, int]) -> bytes:
    """A PNG whose header is sound but whose pixel data stops short: decoding it fails."""
    noise = np.random.default_rng(0).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    data = buffer.getvalue()
    return data[: data.index(b"IDAT") + 64]


@pytest.mark.parametrize("suffix", list(ARCHIVE_WRITERS))
def test_decoded_images_over_the_byte_limit(tmp_path, suffix):
    # Tiny PNGs of big blank images: small archive, large pixel arrays.
    members = {f"train/{'ab'[i % 2]}/{i}.png": png_bytes((64, 64)) for i in range(20)}
    path = ARCHIVE_WRITERS[suffix](tmp_path / f"upload{suffix}",
                                   {**members, "test/a/x.png": png_bytes((64, 64))})
    with pytest.raises(DatasetFormatError, match="decoded images exceed 100000 bytes"):
        load(path, ArchiveLimits(max_decoded_bytes=100_000))


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_the_image_over_the_decoded_cap_is_refused_from_its_header(tmp_path, suffix):
    # A tar is one stream, its member count unknown until its end. Eight 64x64 RGB images fit
    # in 100,000 bytes; the ninth, whose pixel data is broken, would not: the cap must refuse
    # it before its pixels are decoded.
    members = {f"train/{'ab'[i % 2]}/{i}.png": png_bytes((64, 64)) for i in range(8)}
    members["train/b/z-broken.png"] = truncated_png((64, 64))
    path = ARCHIVE_WRITERS[suffix](tmp_path / f"upload{suffix}", members)
    with pytest.raises(DatasetFormatError, match="z-broken.png': decoded images exceed"):
        load(path, ArchiveLimits(max_decoded_bytes=100_000))
    with pytest.raises(DatasetFormatError, match="z-broken.png': not a readable image"):
        load(path)  # under the default cap it is decoded, and fails


def test_a_zip_is_refused_before_its_first_image_is_decoded(tmp_path):
    # The listing says how many images there are: with the first header the total is known,
    # and the first image (which would fail to decode) is never decoded.
    members = {"train/a/0.png": truncated_png((64, 64))}
    members |= {f"train/b/{i}.png": png_bytes((64, 64)) for i in range(1, 9)}
    path = write_zip(tmp_path / "upload.zip", members)
    with pytest.raises(DatasetFormatError, match=r"0.png': decoded images exceed 100000 bytes "
                                                 r"\(9 images of 64x64 RGB"):
        load(path, ArchiveLimits(max_decoded_bytes=100_000))


def test_npz_over_the_decoded_cap_is_refused_from_its_headers(tmp_path):
    path = tmp_path / "upload.npz"
    np.savez(path, **_valid_npz_arrays())  # 6 rows of 3 float32 features: 72 bytes
    with pytest.raises(DatasetFormatError, match="decoded arrays exceed 71 bytes"):
        load(path, ArchiveLimits(max_decoded_bytes=71))
    assert load(path, ArchiveLimits(max_decoded_bytes=72)).num_classes == 2


LONG_NAME = "train/a/" + "x" * 2000 + ".png"


@pytest.mark.parametrize("suffix", list(ARCHIVE_WRITERS))
def test_a_sample_id_the_database_cannot_hold_is_refused(tmp_path, suffix):
    path = ARCHIVE_WRITERS[suffix](tmp_path / f"upload{suffix}",
                                   {**VALID, LONG_NAME: png_bytes()})
    with pytest.raises(DatasetFormatError, match="longer than 1024 characters"):
        load(path)


@pytest.mark.parametrize(("subjects", "complaint"), [
    (b"sample_id,subject\ntrain/a/0.png," + b"s" * 500 + b"\n", "longer than 200 characters"),
    (b"sample_id,subject\ntrain/a/0.png,bad\x00subject\n", "NUL characters"),
])
def test_a_subject_the_database_cannot_hold_is_refused(tmp_path, subjects, complaint):
    # The zip's subjects file is read first, so the broken image is never decoded.
    members = {**VALID, "train/b/z.png": truncated_png((4, 4)), "subjects.csv": subjects}
    with pytest.raises(DatasetFormatError, match=f"subjects.csv line 2: subject.*{complaint}"):
        load(write_zip(tmp_path / "upload.zip", members))


@pytest.mark.parametrize(("key", "values", "complaint"), [
    ("ids_train", ["a", "b", "c" * 2000, "d"], "ids_train: id 'ccc.*longer than 1024"),
    ("ids_train", ["a", "b\x00c", "c", "d"], "ids_train: id .*NUL characters"),
    ("subjects_train", ["a", "", "s" * 500, "d"], "subjects_train: subject .*longer than 200"),
])
def test_npz_text_the_database_cannot_hold_is_refused(tmp_path, key, values, complaint):
    path = tmp_path / "upload.npz"
    np.savez(path, **_valid_npz_arrays(), **{key: np.array(values)})
    with pytest.raises(DatasetFormatError, match=complaint):
        load(path)


# --- memory ------------------------------------------------------------------------------

PEAK_MEMORY_PROBE = """
import sys
from pathlib import Path
from worker.engine.data.formats import load_dataset_file

def kib(field):
    status = Path("/proc/self/status").read_text().split("\\n")
    return int(next(line for line in status if line.startswith(field)).split()[1])

upload, scratch, out = sys.argv[1:]
Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS (Linux)
before = kib("VmRSS:")
arrays = load_dataset_file(Path(upload), upload, scratch_dir=Path(scratch))
arrays.save(Path(out))
print((kib("VmHWM:") - before) * 1024)
"""


def test_decoding_many_ordinary_images_stays_within_bounded_memory(tmp_path):
    """32 blank 1024x1024 PNGs: a 100 KB zip, 96 MiB of pixels. Stacking a list of decoded
    images, copying the splits out of it, statistics over a float64 copy and serialising to
    bytes grew the process by about 12 times that; now the arrays are written in place."""
    members = {f"{split}/{'ab'[i % 2]}/{i}.png": png_bytes((1024, 1024))
               for i, split in enumerate(["train"] * 28 + ["test"] * 4)}
    upload = write_zip(tmp_path / "upload.zip", members)
    decoded = 32 * 1024 * 1024 * 3
    probe = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY_PROBE, str(upload), str(tmp_path),
         str(tmp_path / "arrays.safetensors")],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2], check=True)
    growth = int(probe.stdout.split()[-1])
    # The arrays themselves, plus one block of float64 statistics (128 MiB) at most.
    assert growth < decoded + (160 << 20), f"peak memory grew {growth >> 20} MiB"
    saved = DatasetArrays.load(tmp_path / "arrays.safetensors")
    assert saved.x_train.shape == (28, 1024, 1024, 3) and saved.x_test.shape == (4, 1024, 1024, 3)
    assert saved.x_train[5, 1000, 1000].tolist() == [10, 20, 30]
