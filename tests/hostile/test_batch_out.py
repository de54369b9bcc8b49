"""``nim-async batch --out``: only ever a regular file; every OS error is one line.

Real files, FIFOs, symlinks, an immutable folder (``chattr +i``), a read-only and a full tmpfs
(mounted here when root), ``/proc`` and ``/dev/null``; the command runs in a subprocess.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image

from .conftest import run_cli

ROOT = os.geteuid() == 0


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder with two images and a list file naming them."""
    for i, colour in enumerate(((200, 10, 10), (10, 200, 10))):
        Image.new("RGB", (32, 32), colour).save(tmp_path / f"img{i}.png")
    (tmp_path / "list.txt").write_text("img0.png\nimg1.png\n")
    return tmp_path


async def _batch(
    work: Path,
    out: str,
    *extra: str,
    url: str = "http://127.0.0.1:9",
    prefix: tuple[str, ...] = (),
) -> Any:
    return await run_cli(
        "batch",
        "list.txt",
        "--url",
        url,
        "--no-progress",
        "--out",
        out,
        *extra,
        cwd=work,
        prefix=prefix,
    )


def _without_dac_override() -> tuple[str, ...] | None:
    """A prefix that runs a command that obeys file permissions even as root, or None."""
    if os.geteuid() != 0:
        return ()
    if shutil.which("setpriv") is None:
        return None
    caps = "--bounding-set=-dac_override,-dac_read_search"
    ok = subprocess.run(["setpriv", caps, "true"], check=False, capture_output=True)
    return ("setpriv", caps) if ok.returncode == 0 else None


@contextlib.contextmanager
def _mounted(path: Path, options: str) -> Iterator[Path]:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=False)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def _chattr(flag: str, folder: Path) -> bool:
    return subprocess.run(["chattr", flag, str(folder)], check=False).returncode == 0


def _temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


async def test_a_fifo_is_refused_and_kept(work: Path) -> None:
    fifo = work / "pipe"
    os.mkfifo(fifo)
    done = await _batch(work, "pipe", "--overwrite")
    line = done.one_line_error()
    assert "pipe" in line
    assert "a FIFO, not a regular file" in line
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # HEAD replaced it by a regular file


async def test_a_directory_is_refused(work: Path) -> None:
    (work / "outdir").mkdir()
    (work / "outdir" / "keep").write_text("x")
    done = await _batch(work, "outdir", "--overwrite")
    assert "a directory, not a regular file" in done.one_line_error()  # HEAD: a traceback
    assert (work / "outdir" / "keep").read_text() == "x"


async def test_a_symlink_to_a_device_is_refused(work: Path) -> None:
    (work / "link").symlink_to("/dev/null")
    done = await _batch(work, "link", "--overwrite")
    line = done.one_line_error()
    assert "link (-> /dev/null)" in line
    assert "under /dev" in line
    assert (work / "link").is_symlink()  # HEAD removed the link and wrote a file


@pytest.mark.skipif(not ROOT, reason="mknod needs root")
async def test_a_device_node_is_refused_and_kept(work: Path, emulator: Any) -> None:
    node = work / "node"
    os.mknod(node, 0o644 | stat.S_IFCHR, os.makedev(1, 3))  # a second /dev/null, in tmp
    done = await _batch(work, "node", "--overwrite", url=emulator.url)
    line = done.one_line_error()  # HEAD: exit 0, the device replaced by a 779-byte file
    assert "node: it is a character device, not a regular file" in line
    assert stat.S_ISCHR(os.lstat(node).st_mode)


async def test_dev_null_itself_is_refused(work: Path) -> None:
    # never run on HEAD: as root it would have replaced /dev/null by a regular file
    done = await _batch(work, "/dev/null", "--overwrite")
    assert "/dev/null" in done.one_line_error()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


async def test_under_proc_is_one_line(work: Path) -> None:
    done = await _batch(work, "/proc/nim-async-results.jsonl")
    line = done.one_line_error()
    assert "/proc/nim-async-results.jsonl" in line
    assert "under /proc" in line


@pytest.mark.skipif(not ROOT or shutil.which("chattr") is None, reason="needs root + chattr")
async def test_an_immutable_folder_is_one_line(work: Path) -> None:
    folder = work / "frozen"
    folder.mkdir()
    if not _chattr("+i", folder):
        pytest.skip("chattr +i is not supported on this filesystem")
    try:
        done = await _batch(work, "frozen/out.jsonl")
    finally:
        _chattr("-i", folder)
    line = done.one_line_error()
    assert "frozen/out.jsonl" in line
    assert "Operation not permitted" in line


@pytest.mark.skipif(not ROOT, reason="mounts a tmpfs")
async def test_a_read_only_folder_is_one_line(work: Path) -> None:
    with _mounted(work / "ro", "ro,size=64k"):
        done = await _batch(work, "ro/out.jsonl")
    line = done.one_line_error()
    assert "ro/out.jsonl" in line
    assert "Read-only file system" in line


async def test_an_unwritable_folder_is_one_line(work: Path) -> None:
    prefix = _without_dac_override()  # root: the command runs without CAP_DAC_OVERRIDE
    if prefix is None:
        pytest.skip("root, and setpriv cannot drop CAP_DAC_OVERRIDE here")
    folder = work / "locked"
    folder.mkdir(mode=0o500)
    done = await _batch(work, "locked/out.jsonl", prefix=prefix)
    line = done.one_line_error()  # HEAD: a PermissionError traceback
    assert "locked/out.jsonl" in line
    assert "Permission denied" in line
    assert not list(folder.iterdir())


@pytest.mark.skipif(not ROOT, reason="mounts a tmpfs")
async def test_a_full_disk_is_one_line(work: Path, emulator: Any) -> None:
    with _mounted(work / "small", "size=16k") as small:
        with contextlib.suppress(OSError), (small / "filler").open("wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        done = await _batch(work, "small/out.jsonl", url=emulator.url)
    line = done.one_line_error()
    assert "small/out.jsonl" in line
    assert "No space left on device" in line


async def test_overwrite_replaces_a_regular_file_atomically(work: Path, emulator: Any) -> None:
    out = work / "out.jsonl"
    out.write_text('{"source": "old", "status": "ok"}\n')
    out.chmod(0o640)
    keep = work / "hardlink"
    os.link(out, keep)
    done = await _batch(work, "out.jsonl", "--overwrite", url=emulator.url)
    assert done.rc == 0, done.err
    lines = [orjson.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["source"] for r in lines) == ["img0.png", "img1.png"]
    assert keep.read_text() == '{"source": "old", "status": "ok"}\n'  # renamed over, not truncated
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert not _temp_files(work)


async def test_a_symlink_to_a_regular_file_writes_the_file(work: Path, emulator: Any) -> None:
    (work / "real.jsonl").write_text("")
    (work / "link.jsonl").symlink_to("real.jsonl")
    done = await _batch(work, "link.jsonl", "--overwrite", url=emulator.url)
    assert done.rc == 0, done.err
    assert (work / "link.jsonl").is_symlink()
    assert len((work / "real.jsonl").read_text().splitlines()) == 2


async def test_batch_help_documents_the_exit_status(work: Path) -> None:
    done = await run_cli("batch", "--help", cwd=work)
    text = " ".join(done.out.split())
    assert "exit status: 0 every input succeeded; 1 an input failed" in text
    assert "130 interrupted" in text


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
async def test_dev_shm_is_a_plain_folder(work: Path, emulator: Any) -> None:
    out = Path("/dev/shm") / f"nim-async-test-{os.getpid()}-{id(work)}.jsonl"
    try:
        done = await _batch(work, str(out), url=emulator.url)
        assert done.rc == 0, done.err
        assert len(out.read_text().splitlines()) == 2
    finally:
        out.unlink(missing_ok=True)


def _handles_on(path: Path) -> int:
    target = str(path.resolve())
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == target)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
def test_a_journal_opened_then_entered_opens_the_file_once(tmp_path: Path) -> None:
    from nim_async.predict.journal import BatchJournal

    out = tmp_path / "r.jsonl"
    lines = [
        {"source": str(tmp_path / f"{n}.png"), "status": s}
        for n, s in (("a", "ok"), ("b", "error"))
    ]
    out.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    with BatchJournal(out, resume=True, retry_errors=True).open() as journal:  # the CLI's way
        assert _handles_on(out) == 1  # HEAD: 2, the first one left to the garbage collector
        assert journal.dropped_errors == 1  # HEAD: 0, the second open re-read the cleaned file
    assert _handles_on(out) == 0
