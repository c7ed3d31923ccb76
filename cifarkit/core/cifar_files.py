"""Where CIFAR-100 is on disk, and reading it: the folder or archive --data-dir names, the download,
the extraction.

    find_cifar100(data_dir)    -> where the files are (a folder or an archive), or None
    cifar100_source(data_dir)  -> the same, fetched and extracted first when needed: the one place
                                  that decides
    load_cifar100(data_dir)    -> (train_images, train_labels, test_images, test_labels), numpy

The trainer (part_2_cifar.py) turns the arrays into tensors on the device.
Every failure is a DataError: one line naming the file and what to do.
"""

from __future__ import annotations

import errno
import os
import pickle
import posixpath
import secrets
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifarkit.core.cli import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    FILE_ADVICE,
    CommandError,
    FileFailed,
    one_line,
    os_error_in,
)
from cifarkit.core.folders import unwritable

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
# The official archive's md5, as torchvision checks it.
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
CIFAR100_BYTES = 169_001_437  # size of the official archive, to set a cut-short download beside it
CIFAR100_ARCHIVE = "cifar-100-python.tar.gz"
CIFAR100_DIR = "cifar-100-python"
# what cifar-100-python/ holds (the archive adds an unused file.txt~)
CIFAR100_FILES = (
    "train",
    "test",
    "meta",
)
DATA_DIR_HELP = (
    f"the folder holding {CIFAR100_DIR}/ or {CIFAR100_ARCHIVE}, or either of those itself "
    "(default ./data; downloaded there if absent)"
)
NUM_CLASSES = 100


class DataError(CommandError, RuntimeError):
    """The data set is missing, malformed or out of reach; the message names the file and what to
    do.

    exit_code 2: a file or folder the user must fix (DownloadError: 1, the network may work next
    time)."""

    exit_code = EXIT_BAD_INPUT


class DownloadError(DataError):
    """The download failed (no network, the server, a checksum): exit 1, the same command may work
    later."""

    exit_code = EXIT_FAILED


@dataclass(frozen=True)
class CifarSource:
    """Where the CIFAR-100 files are, as cifar100_source decided: `path` is absolute and resolved,
    so it names the same files from any working directory (what a run records about its data)."""

    # a folder holding train, test and meta, or an archive holding cifar-100-python/ (read in
    # memory)
    path: Path
    kind: str  # "folder" or "archive"


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in CIFAR100_FILES)


def _is_archive(path: Path) -> bool:
    try:
        return path.name.endswith((".tar.gz", ".tgz", ".tar")) or tarfile.is_tarfile(path)
    except OSError:
        return False


def find_cifar100(data_dir: Path) -> CifarSource | None:
    """The CIFAR-100 files that --data-dir points at, or None if there are none (a download is due).

    Looks, in this order, at D/cifar-100-python/, D itself (the extracted folder),
    D/cifar-100-python/cifar-100- python/ (extracted once too often), D/cifar-100-python.tar.gz, D
    itself as an archive, and the archive beside D when D is named cifar-100-python. Raises
    DataError for a D that is some other file, and for a folder that holds only some of train, test
    and meta with no archive to use instead (it is never replaced: it may be the only copy).
    """
    d = Path(data_dir)
    folders = [d / CIFAR100_DIR, d, d / CIFAR100_DIR / CIFAR100_DIR]
    for folder in folders:
        if _complete(folder):
            return CifarSource(folder.resolve(), "folder")
    archives = [
        d / CIFAR100_ARCHIVE,
        d,
        *([d.parent / CIFAR100_ARCHIVE] if d.name == CIFAR100_DIR else []),
    ]
    for archive in archives:
        if archive.is_file() and _is_archive(archive):
            return CifarSource(archive.resolve(), "archive")
    if d.is_file():
        parent = (
            f"--data-dir {d.parent}"
            if _complete(d.parent)
            else f"the folder that holds {CIFAR100_DIR}/"
        )
        raise DataError(
            f"--data-dir {d} is a file, neither a folder nor the CIFAR-100 archive: use {parent}"
        )
    # a folder of that name is meant to be the data
    for folder in (f for f in folders if f.name == CIFAR100_DIR):
        present = [name for name in CIFAR100_FILES if (folder / name).is_file()]
        if present:
            missing = [name for name in CIFAR100_FILES if name not in present]
            raise DataError(
                f"{folder} holds {' and '.join(present)} but no {' or '.join(missing)}: an "
                "incomplete "
                f"CIFAR-100 folder; put the missing file(s) back from {CIFAR100_URL}, or move the "
                f"folder aside and run again to download the data set"
            )
    return None


def read_archive(archive: Path) -> dict[str, bytes]:
    """{"train": bytes, "test": bytes, "meta": bytes} of the archive's cifar-100-python/ (about 180
    MB in memory).

    Nothing is written and no member name is used as a path, so this is safe on every Python
    (tarfile's extraction filters exist only from 3.10.12 / 3.11.4 / 3.12). Raises DataError naming
    the archive and what is wrong."""
    wanted = {f"{CIFAR100_DIR}/{name}": name for name in CIFAR100_FILES}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = wanted.get(posixpath.normpath(member.name))
                # a link or device under a wanted name is not the data set
                if name and member.isfile():
                    found[name] = tar.extractfile(member).read()
    except (
        tarfile.TarError,
        EOFError,
        OSError,
        zlib.error,
    ) as e:  # cut short, not an archive, unreadable
        raise DataError(
            f"{archive} cannot be read as a tar archive ({type(e).__name__}: {one_line(e)})"
        ) from None
    missing = [f"{CIFAR100_DIR}/{name}" for name in CIFAR100_FILES if name not in found]
    if missing:
        raise DataError(f"{archive} has no {' or '.join(missing)}: not the CIFAR-100 archive")
    return found


def check_archive(archive: Path, md5: str = CIFAR100_MD5) -> None:
    """Accept the official archive (md5, by torchvision), or one that differs but reads as CIFAR-100
    (a repacked copy: one line says so). Raises DataError for any other: its size beside the
    official one, and what to do."""
    from torchvision.datasets.utils import check_integrity

    if check_integrity(str(archive), md5):
        return
    try:
        read_archive(archive)
    except DataError as e:
        cause = str(e).removeprefix(f"{archive} ")
        raise DataError(
            f"{archive} fails the CIFAR-100 checksum: it is {archive.stat().st_size:,} bytes where "
            "the archive is "
            f"{CIFAR100_BYTES:,} (md5 {md5}), and it {cause}; a download cut short? Replace it "
            "with a complete copy "
            f"of {CIFAR100_URL}, or move it aside and run again to download one"
        ) from None
    print(
        f"note: {archive} is not byte for byte the official archive (md5 differs) but holds the "
        "CIFAR-100 files: "
        "using it",
        flush=True,
    )


def download_cifar100(folder: Path, url: str = CIFAR100_URL, md5: str = CIFAR100_MD5) -> Path:
    """Fetch the archive into `folder` with torchvision (which checks its md5); return the archive's
    path.

    The bytes go to a .part file, renamed only once complete and checked, so a cut download is never
    where an archive is looked for. Raises DownloadError (exit 1) when the download fails."""
    from torchvision.datasets.utils import download_url

    archive = Path(folder) / Path(url).name
    part = archive.with_name(archive.name + ".part")  # ours alone: removed when the download fails
    print(f"downloading CIFAR-100 from {url} to {archive} ...", flush=True)
    try:
        download_url(url, str(folder), filename=part.name, md5=md5)
        os.replace(part, archive)
    except Exception as e:  # network errors come in many classes, one line; a full disk: a file's
        disk = os_error_in(e)
        if disk is not None and disk.errno in FILE_ADVICE and disk.errno != errno.ENOENT:
            raise FileFailed(disk, "write", part, kept="nothing of the download is kept") from None
        raise DownloadError(
            f"could not download CIFAR-100 ({type(e).__name__}: {one_line(e)}); fetch {url} "
            f"yourself and put it at {archive} (or its extracted folder at "
            f"{archive.parent / CIFAR100_DIR})"
        ) from None
    finally:
        part.unlink(missing_ok=True)
    return archive


def extract_archive(archive: Path) -> Path:
    """Write the archive's train, test and meta to cifar-100-python/ beside it; return that folder.

    They go to a cifar-100-python.partial-* folder first, renamed when whole: a cut extraction never
    looks like data. If another process extracted it meanwhile, its folder is used and ours
    removed."""
    members = read_archive(archive)
    target = archive.parent / CIFAR100_DIR
    print(f"extracting {CIFAR100_DIR}/ from {archive} (once)", flush=True)
    partial = archive.parent / f"{CIFAR100_DIR}.partial-{secrets.token_hex(4)}"
    try:
        partial.mkdir()
        for name, raw in members.items():
            (partial / name).write_bytes(raw)
        os.rename(partial, target)  # replaces an empty folder, refuses a full one
    except OSError as e:  # a full disk, a read-only folder: the archive stays for the next run
        if not _complete(target):
            raise FileFailed(
                e,
                "extract into",
                target,
                kept=f"{archive} is kept, and the next run "
                "extracts it again (or reads it in memory where its folder cannot be "
                "written)",
            ) from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # only our own partial copy
    return target


def _download_folder(data_dir: Path) -> Path:
    """Where a download for --data-dir D goes: D, or D's parent when D is named cifar-100-python
    (the extracted folder then lands at D). Raises DataError (exit 2) when that would guess at a
    mistyped path or cannot be written."""
    d = Path(data_dir)
    folder = d.parent if d.name == CIFAR100_DIR else d
    if d.name.endswith((".tar.gz", ".tgz", ".tar")):
        raise DataError(
            f"--data-dir {d} does not exist: give the archive's path, or a folder to download it "
            "into"
        )
    if not folder.exists() and not folder.parent.is_dir():
        raise DataError(
            f"--data-dir {d} does not exist, nor does {folder.parent}: check the path (a download "
            "creates only the last folder)"
        )
    why = unwritable(folder)
    if why:
        raise DataError(
            f"no CIFAR-100 in {d}, and it cannot be downloaded there: {why}; use a --data-dir you "
            f"can write to, or one that holds {CIFAR100_DIR}/ or {CIFAR100_ARCHIVE}"
        )
    folder.mkdir(exist_ok=True)
    return folder


def cifar100_source(
    data_dir: Path, download: bool = True, url: str = CIFAR100_URL, md5: str = CIFAR100_MD5
) -> CifarSource:
    """Where CIFAR-100 is read from for --data-dir, fetched first if it has none: the one place that
    decides.

    A folder is used as it is (find_cifar100 says where it may be). An archive is checked
    (check_archive) and, when it was found in a folder that can be written and has no
    cifar-100-python/ yet, extracted there once; otherwise it is read in memory on every run, and
    one line says why. Raises DataError: exit 2, a file or folder to fix (DownloadError: exit 1)."""
    source = find_cifar100(data_dir)
    if source is None:
        if not download:
            raise DataError(
                f"no CIFAR-100 in {data_dir}: neither {CIFAR100_DIR}/ nor {CIFAR100_ARCHIVE} is "
                "there"
            )
        source = CifarSource(
            download_cifar100(_download_folder(data_dir), url, md5).resolve(), "archive"
        )
    if source.kind == "folder":
        return source
    check_archive(source.path, md5)
    target = source.path.parent / CIFAR100_DIR
    if Path(data_dir).is_file():
        why = (
            "an archive given as --data-dir is never extracted (give its folder to extract it "
            "there once)"
        )
    elif target.exists() and not (target.is_dir() and not any(target.iterdir())):
        why = f"{target} is there but incomplete, and is left as it is"
    else:
        why = unwritable(source.path.parent)
    if why is None:
        return CifarSource(extract_archive(source.path).resolve(), "folder")
    print(f"reading CIFAR-100 from {source.path} in memory, not extracted: {why}", flush=True)
    return source


def read_cifar_pickle(path: Path | str, raw: bytes | None = None) -> dict:
    """One CIFAR pickle as a dict with str keys; Python 2 wrote the official files, so keys may be
    bytes. `raw`: the file's bytes, read from an archive (`path` then names the member, for
    messages)."""
    try:
        if raw is None:
            with open(path, "rb") as f:
                loaded = pickle.load(f, encoding="latin1")
        else:
            loaded = pickle.loads(raw, encoding="latin1")
    except OSError as e:  # missing since it was found, or unreadable
        raise DataError(f"{path} cannot be read ({e.strerror or e})") from None
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
    ) as e:
        raise DataError(
            f"{path} is truncated or corrupt ({type(e).__name__}: {one_line(e)})"
        ) from None
    if not isinstance(loaded, dict):
        raise DataError(
            f"{path} is not a CIFAR-100 file: it holds a {type(loaded).__name__}, not a dict"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in loaded.items()}


def _images_and_labels(path: Path | str, raw: bytes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images as (N, 32, 32, 3) uint8 and fine labels as (N,) int64, checked against the CIFAR-100
    format."""
    batch = read_cifar_pickle(path, raw)
    if "data" not in batch or "fine_labels" not in batch:
        raise DataError(f"{path} has no 'data' or 'fine_labels' entry: not a CIFAR-100 data file")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["fine_labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise DataError(
            f"{path}: data has shape {data.shape} and dtype {data.dtype}, expected (N, 3072) uint8"
        )
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {labels.size} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(
            f"{path}: labels span {labels.min()}..{labels.max()}, expected 0..{NUM_CLASSES - 1}"
        )
    return data.reshape(-1, 3, 32, 32).transpose(
        0, 2, 3, 1
    ).copy(), labels  # rows are CHW planes -> NHWC


def load_cifar100(
    data_dir: Path | CifarSource, download: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train_images, train_labels, test_images, test_labels) of the CIFAR-100 that data_dir points
    at (a path, as cifar100_source resolves it, fetching it if absent and `download`; or a
    CifarSource it returned)."""
    source = data_dir if isinstance(data_dir, CifarSource) else cifar100_source(data_dir, download)
    if source.kind == "archive":
        raw = read_archive(source.path)
        files = {
            name: (f"{source.path}: {CIFAR100_DIR}/{name}", raw[name]) for name in CIFAR100_FILES
        }
    else:
        files = {name: (source.path / name, None) for name in CIFAR100_FILES}
    meta_name, meta_raw = files["meta"]
    names = read_cifar_pickle(meta_name, meta_raw).get("fine_label_names")
    if names is None or len(names) != NUM_CLASSES:
        found = "none" if names is None else len(names)
        raise DataError(
            f"{meta_name} lists {found} fine label names, expected {NUM_CLASSES}: not CIFAR-100"
        )
    return (*_images_and_labels(*files["train"]), *_images_and_labels(*files["test"]))
