"""Malicious archives are rejected whole, with nothing written outside the target."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from nim_async.deploy.weights import prepare_weights, safe_extract
from nim_async.errors import WeightsError


def _link(name: str, target: str, *, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def _special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor = 1
    info.devminor = 3
    return info


def _file(name: str, content: bytes = b"pwned") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info, content


def _tar(kit, *members: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]) -> bytes:
    """A valid model archive followed by ``members`` (so only the bad member is at fault)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in kit.model_files().items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for member in members:
            if isinstance(member, tuple):
                tar.addfile(member[0], io.BytesIO(member[1]))
            else:
                tar.addfile(member)
    return buffer.getvalue()


def _cases(tmp_path: Path) -> dict[str, list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]]:
    outside = tmp_path / "outside"
    return {
        "dotdot": [_file("../../evil.txt")],
        "dotdot-nested": [_file("model_full/../../../evil.txt")],
        "absolute": [_file(str(tmp_path / "abs_evil.txt"))],
        "symlink-out": [_link("model_full/escape", "../../.."), _file("model_full/escape/evil")],
        "symlink-absolute": [_link("model_full/escape", str(outside))],
        "symlink-chain": [_link("a", "."), _link("b", "a/.."), _file("b/evil.txt")],
        "symlink-chain-target": [_link("a", "."), _link("b", "a/..")],
        "hardlink-out": [_link("model_full/hl", "../../outside_file", hard=True)],
        "hardlink-absolute": [_link("model_full/hl", str(tmp_path / "outside_file"), hard=True)],
        "chardev": [_special("model_full/null", tarfile.CHRTYPE)],
        "blockdev": [_special("model_full/sda", tarfile.BLKTYPE)],
        "fifo": [_special("model_full/pipe", tarfile.FIFOTYPE)],
    }


CASES = list(_cases(Path("/x")))


@pytest.mark.parametrize("case", CASES)
async def test_malicious_download_is_rejected_with_nothing_outside(
    case, fake_vi, vi_config, models_dir, tmp_path, kit
):
    (tmp_path / "outside_file").write_text("do not touch")
    before = kit.all_paths(tmp_path)
    fake_vi.outputs["out-1"] = _tar(kit, *_cases(tmp_path)[case])

    with pytest.raises(WeightsError, match="unsafe archive"):
        await prepare_weights(vi_config(), quiet=True)

    after = kit.all_paths(tmp_path)
    new = after - before
    # Only the (empty) download folder and the models folder itself may have appeared.
    assert new <= {"models", "models/.downloads"}, new
    assert (tmp_path / "outside_file").read_text() == "do not touch"
    assert not (tmp_path / "abs_evil.txt").exists()
    assert not (models_dir / kit.RUN_ID).exists()


@pytest.mark.parametrize("case", CASES)
def test_safe_extract_writes_nothing_for_unsafe_archives(case, tmp_path, kit):
    target = tmp_path / "deep" / "target"
    target.mkdir(parents=True)
    archive = tmp_path / "a.tar"
    archive.write_bytes(_tar(kit, *_cases(tmp_path)[case]))
    before = kit.all_paths(tmp_path)

    with pytest.raises(WeightsError, match="unsafe archive"):
        safe_extract(archive, target)

    # Rejected before extraction: not even the harmless members were written.
    assert kit.all_paths(tmp_path) == before


def test_benign_links_inside_are_kept(tmp_path, kit):
    archive = tmp_path / "a.tar"
    archive.write_bytes(
        _tar(
            kit,
            _link("model_full/latest.safetensors", "model.safetensors"),
            _link("model_full/weights", "."),
            _link("model_full/copy.json", "model_full/config.json", hard=True),
        )
    )
    target = tmp_path / "t"
    target.mkdir()

    safe_extract(archive, target)

    full = target / "model_full"
    assert (full / "latest.safetensors").is_symlink()
    assert (full / "latest.safetensors").read_bytes() == kit.weights_bytes()
    assert (full / "copy.json").read_bytes() == (full / "config.json").read_bytes()


def test_corrupt_archive_is_a_weights_error(tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(b"this is not a tar archive" * 100)
    target = tmp_path / "t"
    target.mkdir()

    with pytest.raises(WeightsError, match="cannot read"):
        safe_extract(archive, target)
