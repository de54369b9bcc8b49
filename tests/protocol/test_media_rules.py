"""The IO-free media rules (protocol/media.py): suffixes, container sniffing, size cap, data URIs.

Plain functions on strings and bytes, so every case is checked here without a file or server;
the predictor's use of them is covered in tests/predictor/test_video_sources.py.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from nim_async.errors import MediaError
from nim_async.protocol.media import (
    check_video_size,
    data_uri_payload,
    decode_base64,
    is_http_url,
    is_video_data_uri,
    refuse_other_video,
    refuse_video_suffix,
    refused_video_container,
    sniff_video,
    source_suffix,
    video_container,
    video_suffix,
)

MP4_HEAD = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00"
WEBM_HEAD = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81"


@pytest.mark.parametrize(
    ("source", "suffix"),
    [
        ("clip.MP4", ".mp4"),
        (Path("a/b/clip.mkv"), ".mkv"),
        ("https://host/v/clip.webm?sig=a.avi#t=3", ".webm"),  # query and fragment ignored
        ("HTTPS://host", ""),  # a URL without a path has no suffix
        ("http://host.mp4", ""),
        ("data:video/mp4;base64,AAAA.mp4", ""),
        (b"clip.mp4", ""),
        ("noext", ""),
    ],
)
def test_source_suffix(source: object, suffix: str) -> None:
    assert source_suffix(source) == suffix


def test_video_suffix_and_url_kinds() -> None:
    assert video_suffix("x.mov") == "mp4"
    assert video_suffix("x.MKV") == "webm"
    assert video_suffix("x.png") is None
    assert is_http_url("HTTP://h/x")
    assert is_http_url("https://h")
    assert not is_http_url("data:image/png;base64,")
    assert not is_http_url("/tmp/http://x")
    assert is_video_data_uri("DATA:Video/webm;base64,")
    assert not is_video_data_uri("data:image/")


@pytest.mark.parametrize(
    ("head", "family"),
    [
        (MP4_HEAD, "mp4"),
        (b"\x00\x00\x00\x14ftypqt  ", "mp4"),  # QuickTime MOV
        (b"\x00\x00\x00\x18ftypheic", None),  # HEIF still image
        (b"\x00\x00\x00\x1cftypavif", None),  # AVIF still image
        (WEBM_HEAD, "webm"),
        (b"\x00\x00\x00\x18ftyp", None),  # too short to read a brand
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0d", None),
    ],
)
def test_sniff_video(head: bytes, family: str | None) -> None:
    assert sniff_video(head) == family
    assert sniff_video(memoryview(bytearray(head))) == family


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"RIFF\x00\x00\x00\x00AVI LIST", "AVI"),
        (b"FLV\x01\x05", "FLV"),
        (b"OggS\x00\x02", "Ogg"),
        (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "ASF / WMV"),
        (b"\x00\x00\x01\xba\x44", "MPEG program stream"),
        (b".RMF\x00\x00", "RealMedia"),
        (b"\x47" + b"\x00" * 187 + b"\x47" + b"\x00" * 10, "MPEG transport stream"),
        (b"GIF89a" + b"\x00" * 182 + b"\x47" + b"\x00" * 10, None),  # a GIF is not MPEG-TS
        (MP4_HEAD, None),
    ],
)
def test_refused_video_container(data: bytes, name: str | None) -> None:
    assert refused_video_container(data) == name


def test_refusals_name_the_source_and_the_fix() -> None:
    with pytest.raises(MediaError, match=r"clip\.avi is a video in the AVI container.*ffmpeg"):
        refuse_other_video(b"RIFF\x00\x00\x00\x00AVI LIST", "clip.avi")
    refuse_other_video(MP4_HEAD, "ok.mp4")  # not refused
    with pytest.raises(MediaError, match=r"'\.flv' in a\.flv.*ffmpeg -i a\.flv") as exc:
        refuse_video_suffix(".flv", "a.flv")
    assert exc.value.source == "a.flv"
    refuse_video_suffix(".mp4", "a.mp4")
    with pytest.raises(MediaError, match="first bytes are 00 01 02"):
        video_container(b"\x00\x01\x02" + b"\x00" * 20, "x")
    with pytest.raises(MediaError, match="Ogg container"):
        video_container(b"OggS\x00\x02", "x")
    assert video_container(WEBM_HEAD, "x") == "webm"


def test_video_size_cap() -> None:
    check_video_size(10, 10, "v")
    with pytest.raises(MediaError, match=r"the video v is 11 bytes, over the cap of 10 bytes"):
        check_video_size(11, 10, "v")


def test_data_uri_payload_and_decode() -> None:
    text = base64.b64encode(b"hello world").decode()
    # ";base64" is a token of the URI's header: any case.
    for header in ("data:image/png;base64", "data:video/mp4;BASE64", "DATA:;Base64"):
        assert data_uri_payload(f"{header},{text}", "d", "ex") == text
    for bad in ("data:image/png," + text, "data:image/png;base64"):
        with pytest.raises(MediaError, match=r"only base64 data URIs are supported \(ex\)"):
            data_uri_payload(bad, "d", "ex")
    wrapped = text[:8] + "\n" + text[8:]
    assert decode_base64(wrapped, "d", validate=False) == b"hello world"
    with pytest.raises(MediaError, match="invalid base64 in d"):
        decode_base64(wrapped, "d", validate=True)
    with pytest.raises(MediaError, match="invalid base64 in d"):
        decode_base64("abc", "d", validate=False)  # bad padding
