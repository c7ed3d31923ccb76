"""Where the data is, as users give it: the folder, the extracted folder itself, one level too deep,
the archive, a download cut short, read-only folders, no network, an old tarfile, a split the
classes cannot give."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, cli_args, quick_benchmark, trainer_command

import part_2_cifar as trainer
from cifarkit.core import cifar_files, run_files, settings
from synthetic_cifar100 import write_synthetic_cifar100

TINY = {"num_filters_1": 4, "num_filters_2": 4, "num_filters_3": 4, "batch_size": 64, "epochs": 1}


@pytest.fixture(scope="session")
def ten_classes(tmp_path_factory) -> Path:
    """10 classes x 120 training images (1,200, the issue's case), 2 test images each, in the real
    layout."""
    root = tmp_path_factory.mktemp("ten_classes")
    write_synthetic_cifar100(root, train_per_class=120, test_per_class=2, num_classes=10, seed=4)
    return root


@pytest.fixture(scope="session")
def archive(ten_classes, tmp_path_factory) -> Path:
    """ten_classes packed as the official archive is: a gzipped tar holding cifar-100-python/."""
    path = tmp_path_factory.mktemp("archive") / cifar_files.CIFAR100_ARCHIVE
    with tarfile.open(path, "w:gz") as tar:
        tar.add(ten_classes / cifar_files.CIFAR100_DIR, arcname=cifar_files.CIFAR100_DIR)
    assert path.stat().st_size > 300_000  # so that its first 300 kB are a download cut short
    return path


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def no_network_env(env: dict) -> dict:
    """urllib (torchvision's downloader) sends every request through a proxy nothing listens on: no
    network."""
    env = {k: v for k, v in env.items() if k.lower() != "no_proxy"}
    return env | {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}


def run(
    args: list[str], env: dict, cwd: Path, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def wandb_runs(wandb_dir: Path) -> list[Path]:
    return list(wandb_dir.glob("wandb/*run-*"))


@pytest.fixture(scope="session")
def as_non_root() -> tuple[str, ...]:
    """A command prefix under which permission bits hold: nothing as an ordinary user; as root (who
    ignores them), setpriv dropping the capabilities that override them. Skips where neither is
    possible."""
    if os.geteuid() != 0:
        return ()
    prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")
    if (
        not shutil.which("setpriv")
        or subprocess.run([*prefix, "true"], capture_output=True).returncode != 0
    ):
        pytest.skip("running as root without setpriv: permission bits cannot be made to hold")
    return prefix


@pytest.fixture()
def read_only(tmp_path):
    """Make folders read-only (mode 555) for one test; writable again at the end, so pytest can
    clean up."""
    made = []

    def make(folder: Path) -> Path:
        folder.chmod(0o555)
        made.append(folder)
        return folder

    yield make
    for folder in made:
        folder.chmod(0o755)


# ------------------------------------------------------------------------------------------- where
# the files are


@pytest.mark.parametrize(
    "layout, given",
    [
        ("data/cifar-100-python", "data"),  # the usual: the folder that holds it
        ("data/cifar-100-python", "data/cifar-100-python"),  # the extracted folder itself
        ("nested/cifar-100-python/cifar-100-python", "nested"),  # extracted one level too deep
        ("nested/cifar-100-python/cifar-100-python", "nested/cifar-100-python"),
        ("renamed", "renamed"),  # the three files in a folder of another name
    ],
)
def test_every_plausible_data_dir_finds_the_same_folder(ten_classes, tmp_path, layout, given):
    shutil.copytree(ten_classes / cifar_files.CIFAR100_DIR, tmp_path / layout)
    source = cifar_files.cifar100_source(tmp_path / given, download=False)
    assert source == cifar_files.CifarSource((tmp_path / layout).resolve(), "folder")


def test_the_extracted_folder_itself_trains_and_one_level_too_deep_exports(
    ten_classes, tmp_path, capsys
):
    # Both commands in this process: where --data-dir leads is the point, not the process
    # (test_exit_codes.py runs each command as one).
    import trt_export

    data = tmp_path / "data"
    shutil.copytree(ten_classes, data)
    args = cli_args(TINY) + [
        "--val-size",
        "100",
        "--wandb-mode",
        "disabled",
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    assert trainer.main([*args, "--data-dir", str(data / cifar_files.CIFAR100_DIR)]) == 0, (
        capsys.readouterr().err
    )
    assert "downloading" not in capsys.readouterr().out
    (best,) = (tmp_path / "runs").glob("*/best.pt")

    nested = tmp_path / "nested" / cifar_files.CIFAR100_DIR
    shutil.copytree(data / cifar_files.CIFAR100_DIR, nested / cifar_files.CIFAR100_DIR)
    export = [
        "--checkpoint",
        str(best),
        "--data-dir",
        str(nested),
        "--batch-sizes",
        "1",
        *quick_benchmark(),
        "--precision",
        "fp32",
        "--out",
        str(tmp_path / "export"),
        "--plot",
        str(tmp_path / "plot.png"),
    ]
    assert trt_export.main(export) == 0, capsys.readouterr().err
    assert (
        json.loads((tmp_path / "export" / "benchmark.json").read_text())["data"]["test_images"]
        == 20
    )


def test_an_archive_given_as_data_dir_is_read_in_memory_and_not_extracted(
    archive, ten_classes, tmp_path, capsys
):
    given = tmp_path / "downloads" / "cifar100 (1).tar.gz"
    given.parent.mkdir()
    shutil.copy(archive, given)
    source = cifar_files.cifar100_source(given, download=False, md5=md5_of(archive))
    assert source == cifar_files.CifarSource(given.resolve(), "archive")
    assert "in memory" in capsys.readouterr().out
    assert sorted(p.name for p in given.parent.iterdir()) == [given.name]
    for a, b in zip(
        cifar_files.load_cifar100(source), cifar_files.load_cifar100(ten_classes), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_an_archive_in_a_writable_data_dir_is_extracted_once(
    archive, ten_classes, tmp_path, capsys
):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(archive, data)
    first = cifar_files.cifar100_source(data, download=False, md5=md5_of(archive))
    assert first == cifar_files.CifarSource((data / cifar_files.CIFAR100_DIR).resolve(), "folder")
    assert "extracting" in capsys.readouterr().out
    # no partial folder left
    assert sorted(p.name for p in data.iterdir()) == [
        cifar_files.CIFAR100_DIR,
        cifar_files.CIFAR100_ARCHIVE,
    ]
    assert (
        cifar_files.cifar100_source(data, download=False) == first and capsys.readouterr().out == ""
    )
    for name in cifar_files.CIFAR100_FILES:
        assert (first.path / name).read_bytes() == (
            ten_classes / cifar_files.CIFAR100_DIR / name
        ).read_bytes()


def test_a_repacked_archive_that_reads_as_cifar100_is_used_with_a_note(archive, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(archive, data)
    # the official md5 does not match
    assert cifar_files.cifar100_source(data, download=False).kind == "folder"
    out = capsys.readouterr().out
    assert (
        "not byte for byte the official archive" in out
        and str(data / cifar_files.CIFAR100_ARCHIVE) in out
    )


@pytest.fixture()
def tarfile_of_python_3_11_2(monkeypatch):
    """tarfile as Python 3.11.2 (Debian 12) and 3.10.11 ship it: no extraction filters, and
    extractall refuses the `filter` keyword."""
    real_extractall = tarfile.TarFile.extractall

    def extractall(self, path=".", members=None, *, numeric_owner=False, **kwargs):
        if kwargs:
            raise TypeError(
                f"extractall() got an unexpected keyword argument {next(iter(kwargs))!r}"
            )
        return real_extractall(self, path, members, numeric_owner=numeric_owner)

    for name in ("data_filter", "tar_filter", "fully_trusted_filter"):
        monkeypatch.delattr(tarfile, name, raising=False)
    monkeypatch.setattr(tarfile.TarFile, "extractall", extractall)


def test_the_archive_is_extracted_and_read_where_tarfile_has_no_extraction_filters(
    tarfile_of_python_3_11_2, archive, ten_classes, tmp_path
):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(archive, data)
    extracted = cifar_files.cifar100_source(data, download=False, md5=md5_of(archive))
    in_memory = cifar_files.cifar100_source(archive, download=False, md5=md5_of(archive))
    assert (extracted.kind, in_memory.kind) == ("folder", "archive")
    expected = cifar_files.load_cifar100(ten_classes)
    for source in (extracted, in_memory):
        for a, b in zip(cifar_files.load_cifar100(source), expected, strict=True):
            np.testing.assert_array_equal(a, b)


def test_archive_members_never_write_outside_and_a_link_is_not_the_data(ten_classes, tmp_path):
    """An archive with `../escaped`, an absolute path and a link named cifar-100-python/train:
    refused, and nothing lands anywhere but the data folder."""
    data = tmp_path / "sandbox" / "data"
    data.mkdir(parents=True)
    evil = data / cifar_files.CIFAR100_ARCHIVE
    with tarfile.open(evil, "w:gz") as tar:
        for name in ("test", "meta"):
            tar.add(
                ten_classes / cifar_files.CIFAR100_DIR / name,
                arcname=f"{cifar_files.CIFAR100_DIR}/{name}",
            )
        for name, payload in (("../escaped", b"x"), (str(tmp_path / "absolute"), b"y")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        link = tarfile.TarInfo(f"{cifar_files.CIFAR100_DIR}/train")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(cifar_files.DataError, match="has no cifar-100-python/train"):
        cifar_files.cifar100_source(data, download=False)
    assert sorted(p.name for p in (tmp_path / "sandbox").rglob("*")) == [
        "cifar-100-python.tar.gz",
        "data",
    ]
    assert not (tmp_path / "absolute").exists()


@pytest.mark.parametrize(
    "given, words",
    [
        ("nowhere/data", "nor does"),  # a mistyped path: no 161 MB download into a new tree
        ("missing.tar.gz", "give the archive's path"),
        ("data/cifar-100-python/train", "use --data-dir"),  # a file of the data set, not its folder
    ],
)
def test_a_path_that_is_no_data_dir_is_one_line_and_starts_no_download(
    ten_classes, tmp_path, capsys, given, words
):
    shutil.copytree(ten_classes, tmp_path / "data")
    with pytest.raises(cifar_files.DataError, match=words) as caught:
        cifar_files.cifar100_source(tmp_path / given, url="http://127.0.0.1:9/never-asked")
    assert "\n" not in str(caught.value) and "downloading" not in capsys.readouterr().out


def test_a_file_of_the_data_set_given_as_data_dir_names_its_folder(ten_classes):
    with pytest.raises(
        cifar_files.DataError, match=f"use --data-dir {ten_classes / cifar_files.CIFAR100_DIR}$"
    ):
        cifar_files.cifar100_source(ten_classes / cifar_files.CIFAR100_DIR / "train")


# ----------------------------------------------------------------------- broken files: named, never
# to be deleted


def half_download(archive: Path, data: Path) -> Path:
    data.mkdir(parents=True, exist_ok=True)
    broken = data / cifar_files.CIFAR100_ARCHIVE
    broken.write_bytes(archive.read_bytes()[:300_000])
    return broken


def test_a_half_downloaded_archive_is_named_with_its_size_and_left_alone(
    archive, tmp_path, offline_env
):
    broken = half_download(archive, tmp_path / "data")
    before = broken.read_bytes()
    args = cli_args(TINY) + ["--data-dir", "data", "--wandb-mode", "offline"]
    result = run(trainer_command(*args), no_network_env(offline_env), tmp_path)
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert (
        f"{broken} fails the CIFAR-100 checksum: it is 300,000 bytes where the archive is "
        "169,001,437" in line
    )
    assert "put it at" not in line and "delete" not in line
    assert "downloading" not in result.stdout and broken.read_bytes() == before
    assert wandb_runs(tmp_path) == [] and not (tmp_path / "runs").exists()


def in_this_process(
    program: str, args: list[str], cwd: Path, monkeypatch, capsys
) -> tuple[int, str]:
    """(exit code, stderr) of `program`'s main(args) run in this process from `cwd`, with no
    network: where the command looks and what it says is the point, not its process
    (test_exit_codes.py runs each as one)."""
    import local_sweep
    import select_model

    for key, value in no_network_env({}).items():
        monkeypatch.setenv(key, value)
    for key in [k for k in os.environ if k.lower() == "no_proxy"]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    code = {"local_sweep.py": local_sweep, "select_model.py": select_model}[program].main(args)
    return code, capsys.readouterr().err


def test_every_command_names_a_half_downloaded_archive_before_any_work(
    archive, tmp_path, monkeypatch, capsys
):
    half_download(archive, tmp_path / "data")
    runs = tmp_path / "runs" / "old-run"
    runs.mkdir(parents=True)  # a finished run for select_model to retrain
    config = trainer.validate_config(TINY | {"val_size": 100})
    (runs / "summary.json").write_text(
        json.dumps({"status": "finished", "best_val_accuracy": 50.0, "config": config})
    )
    commands = {
        "local_sweep.py": [str(ROOT / "sweep_config.json"), "--trials", "1", "--runs-dir", "runs"],
        "select_model.py": ["runs", "--seeds", "1", "--images-dir", "images"],
    }
    for program, args in commands.items():
        code, stderr = in_this_process(
            program,
            [*args, "--data-dir", "data", "--wandb-mode", "disabled"],
            tmp_path,
            monkeypatch,
            capsys,
        )
        assert code == 2, (program, stderr)
        assert "fails the CIFAR-100 checksum" in one_line_error(stderr), program
        assert (
            not (tmp_path / "runs" / "selection").exists()
            and not (tmp_path / "runs" / "sweep_config").exists()
        )


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda d: (d / "cifar-100-python" / "test").unlink(), "holds train and meta but no test"),
        (
            lambda d: [(d / "cifar-100-python" / n).unlink() for n in ("train", "test")],
            "holds meta but no train or test",
        ),
        (
            lambda d: (d / "cifar-100-python" / "train").write_bytes(b"\x80\x04cut"),
            "train is truncated or corrupt",
        ),
    ],
)
def test_a_damaged_data_folder_is_named_and_never_to_be_deleted(
    ten_classes, tmp_path, damage, words
):
    data = tmp_path / "nested"
    shutil.copytree(ten_classes, data)
    damage(data)
    with pytest.raises(cifar_files.DataError, match=words) as caught:
        # download allowed: still none over the user's folder
        cifar_files.load_cifar100(data, download=True)
    assert "delete" not in str(caught.value).lower()
    assert (data / "cifar-100-python" / "meta").is_file() and not list(data.glob("*.tar.gz*"))


# --------------------------------------------------------------------------------------------- no
# network at all


def test_no_network_for_the_download_is_one_line_and_leaves_no_wandb_run(tmp_path, offline_env):
    args = cli_args(TINY) + ["--data-dir", "data", "--wandb-mode", "offline"]
    result = run(trainer_command(*args), no_network_env(offline_env), tmp_path)
    assert result.returncode == 1
    line = one_line_error(result.stderr)
    assert (
        "could not download CIFAR-100" in line
        and f"put it at data/{cifar_files.CIFAR100_ARCHIVE}" in line
    )
    # no W&B run, no .part
    assert wandb_runs(tmp_path) == [] and list((tmp_path / "data").iterdir()) == []


# --------------------------------------------------------------------------------------------
# read-only folders


def test_a_read_only_data_folder_holding_only_the_archive_is_read_in_memory(
    archive, tmp_path, offline_env, as_non_root, read_only
):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(archive, data)
    read_only(data)
    args = cli_args(TINY) + ["--data-dir", "data", "--val-size", "100", "--wandb-mode", "disabled"]
    result = run(trainer_command(*args), offline_env, tmp_path, as_non_root)
    assert result.returncode == 0, result.stderr
    assert (
        f"reading CIFAR-100 from {data / cifar_files.CIFAR100_ARCHIVE} in memory" in result.stdout
    )
    assert "not writable" in result.stdout
    assert [p.name for p in data.iterdir()] == [cifar_files.CIFAR100_ARCHIVE]


@pytest.mark.parametrize("how", ["read-only", "under a file"])
def test_a_runs_dir_that_cannot_be_written_is_one_line_before_any_work(
    ten_classes, tmp_path, offline_env, read_only, request, how
):
    if how == "read-only":
        (tmp_path / "runs").mkdir()
        prefix, runs = request.getfixturevalue("as_non_root"), read_only(tmp_path / "runs")
    else:
        prefix, runs = (), tmp_path / "a_file" / "runs"
        (tmp_path / "a_file").write_text("not a folder")
    args = cli_args(TINY) + [
        "--data-dir",
        str(ten_classes),
        "--runs-dir",
        str(runs),
        "--wandb-mode",
        "offline",
    ]
    result = run(trainer_command(*args), offline_env, tmp_path, prefix)
    assert result.returncode == 2
    assert "cannot be written" in one_line_error(result.stderr) and "--runs-dir" in result.stderr
    assert "epoch" not in result.stdout and wandb_runs(tmp_path) == []


def test_an_empty_read_only_data_folder_is_one_line_and_no_download(
    tmp_path, offline_env, as_non_root, read_only
):
    data = tmp_path / "data"
    data.mkdir()
    read_only(data)
    result = run(
        trainer_command(*cli_args(TINY), "--data-dir", "data", "--wandb-mode", "offline"),
        no_network_env(offline_env),
        tmp_path,
        as_non_root,
    )
    assert result.returncode == 2
    assert "cannot be downloaded there: data is not writable" in one_line_error(result.stderr)
    assert "downloading" not in result.stdout and wandb_runs(tmp_path) == []


def test_export_checks_its_output_folders_before_any_work(tmp_path, monkeypatch, capsys):
    import trt_export

    (tmp_path / "a_file").write_text("not a folder")
    model = trainer.SimpleCNN(4, 4, 4)
    run_files.save_atomic(
        {"model": model.state_dict(), "config": trainer.validate_config(TINY), "epoch": 1},
        tmp_path / "best.pt",
    )
    monkeypatch.chdir(tmp_path)  # where the default --out would go
    # in this process
    assert (
        trt_export.main(
            [
                "--checkpoint",
                str(tmp_path / "best.pt"),
                "--plot",
                str(tmp_path / "a_file" / "plot.png"),
                "--data-dir",
                str(tmp_path / "no-data"),
            ]
        )
        == 2
    )
    stderr = capsys.readouterr().err
    assert "--plot" in one_line_error(stderr) and "a_file is a file" in stderr
    assert not (tmp_path / "no-data").exists() and not (tmp_path / "export").exists()


@pytest.mark.parametrize(
    "program, args",
    [
        (
            "local_sweep.py",
            [str(ROOT / "sweep_config.json"), "--trials", "1", "--runs-dir", "a_file/runs"],
        ),
        (
            "local_sweep.py",
            [str(ROOT / "sweep_config.json"), "--trials", "1", "--images-dir", "a_file/images"],
        ),
        ("select_model.py", ["runs", "--images-dir", "a_file/images"]),
    ],
)
def test_sweep_and_selection_check_their_folders_before_any_work(
    tmp_path, monkeypatch, capsys, program, args
):
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "runs").mkdir()
    code, stderr = in_this_process(
        program,
        [*args, "--data-dir", "no-data", "--wandb-mode", "disabled"],
        tmp_path,
        monkeypatch,
        capsys,
    )
    assert code == 2
    assert "cannot be written: a_file is a file" in one_line_error(stderr)
    assert not (tmp_path / "no-data").exists() and list((tmp_path / "runs").iterdir()) == []


# ------------------------------------------------------------------------------------------ a split
# the data can give


def test_a_validation_size_the_classes_cannot_give_is_refused_with_the_class_counts(
    ten_classes, tmp_path, capsys
):
    for val_size, lacks in ((1199, "training"), (5, "validation")):
        args = cli_args(TINY) + [
            "--data-dir",
            str(ten_classes),
            "--val-size",
            str(val_size),
            "--wandb-mode",
            "disabled",
            "--runs-dir",
            str(tmp_path / "runs"),
        ]
        assert trainer.main(args) == 2
        result = capsys.readouterr()
        line = one_line_error(result.err)
        assert (
            f"--val-size={val_size} is not allowed: with 1,200 training images in 10 classes of 120"
            in line
        )
        assert f"it leaves a class with no {lacks} image; use 10..1190" in line
        assert "epoch" not in result.out and not list((tmp_path / "runs").glob("*/last.pt"))


@pytest.mark.parametrize("sizes", [[2, 3, 5, 9], [120] * 10, [1, 7, 7]])
def test_exactly_the_sizes_allowed_give_every_class_training_and_validation_images(sizes):
    labels = np.repeat(np.arange(len(sizes)), sizes)
    np.random.default_rng(0).shuffle(labels)
    allowed = []
    for val_size in range(0, labels.size + 1):
        try:
            train_idx, val_idx = trainer.stratified_split(labels, val_size)
        except settings.ConfigError:
            continue
        assert len(val_idx) == val_size
        assert np.all(np.bincount(labels[train_idx], minlength=len(sizes)) > 0)
        assert np.all(np.bincount(labels[val_idx], minlength=len(sizes)) > 0)
        allowed.append(val_size)
    if min(sizes) < 2:
        assert allowed == []
    else:  # every size that can give both is allowed, and they form one interval
        assert allowed and allowed == list(range(allowed[0], allowed[-1] + 1))
        for outside in (allowed[0] - 1, allowed[-1] + 1):
            with pytest.raises(settings.ConfigError, match=f"use {allowed[0]}..{allowed[-1]}"):
                trainer.stratified_split(labels, outside)


def test_a_split_that_must_be_uneven_says_so_in_one_line(ten_classes, capsys):
    import torch

    trainer.prepare_data(ten_classes, 100, torch.device("cpu"))
    assert capsys.readouterr().out == ""  # 10 of each class: even
    data = trainer.prepare_data(ten_classes, 15, torch.device("cpu"))
    assert np.bincount(data.val_labels.numpy()).tolist().count(2) == 5
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(
        "note: --val-size=15 cannot hold out the same share of each of the 10 classes"
    )
