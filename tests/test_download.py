"""`petseg download` against a local HTTP server serving tiny archives in the release's layout."""

from __future__ import annotations

import hashlib
import io
import json
import re
import signal
import os
import random
import shlex
import socket
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import REPO, invoke_cli, run_cli, start_cli
from petseg_cli.data.archive import UnsafeArchiveError, safe_extract
from petseg_cli.data.cache import CACHE_DIRNAME
from petseg_cli.data.download import MARKER, download, expected_checksums, md5_overrides
from petseg_cli.data.oxford_pet import DataMissingError, split_samples
from petseg_cli.base.errors import PetsegError, UsageError
from petseg_cli.config.settings import DownloadSettings
from synthetic import make_dataset

IMAGES, ANNOTATIONS = "/images.tar.gz", "/annotations.tar.gz"
BROKEN = "Bengal_99.jpg"  # listed in trainval.txt but cannot be decoded, like a few images of the release
FAST = DownloadSettings(retries=2, retry_delay=0.01, connect_timeout=5.0, read_timeout=5.0)
FAST_TOML = "[download]\nretries = 2\nretry_delay = 0.01\nconnect_timeout = 5.0\nread_timeout = 5.0\n"
DATA = "data/pets"  # relative to each test's working directory


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory``, by its path relative to ``directory``."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@dataclass
class Release:
    files: dict[str, bytes]  # URL path -> archive bytes
    content: dict[str, bytes] = field(default_factory=dict)  # what the archives hold, by path

    def md5(self, path: str) -> str:
        return hashlib.md5(self.files[path]).hexdigest()

    @property
    def checksums(self) -> dict[str, str]:
        return {"images": self.md5(IMAGES), "annotations": self.md5(ANNOTATIONS)}

    @property
    def settings(self) -> DownloadSettings:
        """Quick retries, and this release's MD5s."""
        return replace(FAST, images_md5=self.md5(IMAGES), annotations_md5=self.md5(ANNOTATIONS))

    @property
    def md5_args(self) -> list[str]:
        return [arg for name, md5 in self.checksums.items() for arg in ("--md5", f"{name}={md5}")]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Release:
    """4 trainval + 2 test images, one undecodable image, a macOS '._' copy of a trimap, as two .tar.gz."""
    root = make_dataset(tmp_path_factory.mktemp("release") / "src", n_trainval=4, n_test=2, size=(32, 32))
    (root / "images" / BROKEN).write_bytes(b"not a jpeg")
    trainval = root / "annotations" / "trainval.txt"
    trainval.write_text(trainval.read_text() + "Bengal_99 6 1 6\n")
    (root / "annotations" / "trimaps" / "._Abyssinian_1.png").write_bytes(b"\0" * 10)
    return packed(snapshot(root))


def packed(files: dict[str, bytes]) -> Release:
    """``files`` (dataset paths -> bytes) as the release's two archives."""
    under = lambda top: {name: content for name, content in files.items() if name.startswith(f"{top}/")}  # noqa: E731
    return Release({IMAGES: tar_gz(under("images")), ANNOTATIONS: tar_gz(under("annotations"))}, files)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        server: ReleaseServer = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(wanted.group(1)) if wanted and not server.ignore_range else 0
        if start >= len(body) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if self.path in server.drop_after:  # once: send part of the body, then hang up
            self.wfile.write(payload[: server.drop_after.pop(self.path)])
            self.close_connection = True
            return
        if self.path in server.stall_after:  # send part of the body, then go silent until released
            self.wfile.write(payload[: server.stall_after[self.path]])
            self.wfile.flush()
            server.stall_after[self.path] = 0  # a retry (after the client's read timeout) gets nothing more
            server.stalled.set()
            server.release.wait()  # the fixture releases it at the test's end
            self.close_connection = True
            return
        self.wfile.write(payload)


class ReleaseServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files = dict(files)
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.drop_after: dict[str, int] = {}
        self.stall_after: dict[str, int] = {}
        self.ignore_range = False
        self.stalled, self.release = threading.Event(), threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/"

    def ranges(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path]


@pytest.fixture
def server(release):
    srv = ReleaseServer(release.files)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def cwd(tmp_path) -> Path:
    """A working directory whose petseg.toml keeps retries quick."""
    (tmp_path / "petseg.toml").write_text(FAST_TOML)
    return tmp_path


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def run_download(cwd: Path, mirror: str, *args: str, env: dict[str, str] | None = None):
    return invoke_cli("download", "--data-dir", DATA, "--mirror", mirror, *args, cwd=cwd, env=env)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or p.suffix in (".part", ".tmp"))


def test_download_verifies_and_extracts_then_a_second_run_does_nothing_and_force_redoes_it(release, server, cwd):
    first = run_download(cwd, server.url, *release.md5_args)
    assert first.returncode == 0, first.stderr
    data = cwd / DATA
    assert snapshot(data) == {**release.content, MARKER: (data / MARKER).read_bytes()}
    assert "7 images, 6 trimaps, 5 trainval and 2 test entries" in first.stdout
    assert "1 image cannot be decoded" in first.stdout and BROKEN in first.stdout
    marker = json.loads((data / MARKER).read_text())
    assert marker["md5"] == release.checksums and marker["inventory"]["undecodable"] == [BROKEN]
    assert sorted(p.name for p in (cwd / "data").iterdir()) == ["pets"]  # no archive, part or staging left
    assert [path for path, _ in server.requests] == [IMAGES, ANNOTATIONS]

    (data / "images" / "stray.txt").write_text("not part of the release")
    second = run_download(cwd, server.url, *release.md5_args)
    assert second.returncode == 0 and "already complete and verified" in second.stdout
    assert len(server.requests) == 2 and (data / "images" / "stray.txt").exists()

    forced = run_download(cwd, server.url, *release.md5_args, "--force", "--keep-archives")
    assert forced.returncode == 0, forced.stderr
    assert len(server.requests) == 4 and not (data / "images" / "stray.txt").exists()
    assert (cwd / "data" / "images.tar.gz").read_bytes() == release.files[IMAGES]
    assert (cwd / "data" / "annotations.tar.gz").read_bytes() == release.files[ANNOTATIONS]


def test_dropped_connection_is_resumed_with_a_range_request(release, server, cwd):
    half = len(release.files[IMAGES]) // 2
    server.drop_after[IMAGES] = half
    result = run_download(cwd, server.url, *release.md5_args)
    assert result.returncode == 0, result.stderr
    assert server.ranges(IMAGES) == [None, f"bytes={half}-"]
    assert "connection closed after" in result.stderr
    assert json.loads((cwd / DATA / MARKER).read_text())["md5"] == release.checksums


@pytest.mark.slow
def test_ctrl_c_keeps_the_part_file_and_the_next_run_resumes_from_it(release, server, cwd):
    half = len(release.files[IMAGES]) // 2
    server.stall_after[IMAGES] = half
    part = cwd / "data" / "images.tar.gz.part"
    # A read timeout longer than the test: the download waits on the stalled server until Ctrl-C, however
    # slowly this test gets to send it (with the quick one, its retries could all run out first).
    (cwd / "petseg.toml").write_text(FAST_TOML.replace("read_timeout = 5.0", "read_timeout = 600.0"))
    process = start_cli("download", "--data-dir", DATA, "--mirror", server.url, *release.md5_args, cwd=cwd)
    try:
        assert server.stalled.wait(60)
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size == half) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert part.stat().st_size == half, "the first half never reached the part file"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130 and "Traceback" not in stderr
    assert part.stat().st_size == half and not (cwd / DATA).exists()

    server.stall_after.clear()
    (cwd / "petseg.toml").write_text(FAST_TOML)
    result = run_download(cwd, server.url, *release.md5_args)
    assert result.returncode == 0, result.stderr
    assert server.ranges(IMAGES)[-1] == f"bytes={half}-"
    assert not part.exists() and (cwd / DATA / MARKER).exists()


def test_a_server_that_ignores_range_still_yields_a_verified_file(release, server, cwd):
    half = len(release.files[IMAGES]) // 2
    (cwd / "data").mkdir()
    (cwd / "data" / "images.tar.gz.part").write_bytes(release.files[IMAGES][:half])
    server.ignore_range = True
    result = run_download(cwd, server.url, *release.md5_args)
    assert result.returncode == 0, result.stderr
    assert server.ranges(IMAGES) == [f"bytes={half}-"]  # asked to resume, got the whole file with 200
    assert "ignored the request to resume" in result.stderr
    assert (cwd / DATA / MARKER).exists()


def test_a_part_file_that_is_already_whole_is_not_downloaded_again(release, server, tmp_path):
    (tmp_path / "images.tar.gz.part").write_bytes(release.files[IMAGES])  # interrupted while verifying
    download(tmp_path / "pets", bases=[server.url], settings=release.settings)
    size = len(release.files[IMAGES])
    assert server.ranges(IMAGES) == [f"bytes={size}-"]  # answered 416 "Range Not Satisfiable: */size"
    assert (tmp_path / "pets" / MARKER).exists()


def test_wrong_checksum_fails_naming_both_hashes_and_leaves_the_existing_dataset_untouched(release, server, cwd):
    data = cwd / DATA
    download(data, bases=[server.url], settings=release.settings)
    before = snapshot(data)
    wrong = "0123456789abcdef0123456789abcdef"
    md5_args = ["--md5", f"images={wrong}", "--md5", f"annotations={release.md5(ANNOTATIONS)}"]
    result = run_download(cwd, server.url, *md5_args)
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()[-1]
    assert "images.tar.gz" in error and wrong in error and release.md5(IMAGES) in error
    assert "Traceback" not in result.stderr
    assert snapshot(data) == before
    assert (cwd / "data" / "images.tar.gz.corrupt").read_bytes() == release.files[IMAGES]
    assert sorted(p.name for p in (cwd / "data").iterdir()) == ["images.tar.gz.corrupt", "pets"]


def test_archive_with_parent_and_absolute_members_is_refused_and_nothing_lands_outside(release, server, cwd):
    outside = cwd / "absolute-evil"
    server.files[ANNOTATIONS] = tar_gz({"annotations/ok.txt": b"ok", "../evil": b"x", str(outside): b"x"})
    result = run_download(cwd, server.url, *Release(server.files).md5_args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "refused member '../evil'" in result.stderr
    assert not outside.exists() and not (cwd / "evil").exists() and not (cwd / "data" / "evil").exists()
    assert not (cwd / DATA).exists() and not leftovers(cwd / "data")

    server.files[ANNOTATIONS] = tar_gz({"annotations/ok.txt": b"ok", str(outside): b"x"})
    result = run_download(cwd, server.url, *Release(server.files).md5_args)
    assert result.returncode == 1 and "absolute path" in result.stderr and not outside.exists()


def link_member(kind: bytes, name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (link_member(tarfile.SYMTYPE, "images/up", "../../outside"), "symbolic link pointing outside"),
        (link_member(tarfile.SYMTYPE, "images/abs", "/etc/passwd"), "symbolic link pointing outside"),
        (link_member(tarfile.LNKTYPE, "images/hard", "../outside"), "hard link pointing outside"),
        (link_member(tarfile.FIFOTYPE, "images/fifo", ""), "neither a file, a directory nor a link"),
    ],
)
def test_links_pointing_out_and_special_files_are_refused(tmp_path, member, why):
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        tar.addfile(member)
        tar.addfile(tarfile.TarInfo("images/after"), io.BytesIO(b""))
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(UnsafeArchiveError, match=why):
        safe_extract(archive, target)
    assert not (target / "images" / "after").exists()


def test_links_inside_the_target_are_extracted(tmp_path):
    archive = tmp_path / "ok.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("./images/a.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
        tar.addfile(link_member(tarfile.SYMTYPE, "images/b.txt", "a.txt"))
        tar.addfile(link_member(tarfile.LNKTYPE, "images/c.txt", "images/a.txt"))  # to an earlier file
        tar.addfile(link_member(tarfile.DIRTYPE, "images", ""))  # a directory listed after its files
    safe_extract(archive, tmp_path)
    assert (tmp_path / "images" / "b.txt").read_text() == (tmp_path / "images" / "c.txt").read_text() == "hi"


def file_member(name: str) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info, io.BytesIO(b"x")


LINK_TO_SUB = [  # a directory, and a symbolic link to it
    (link_member(tarfile.DIRTYPE, "images/sub", ""), None),
    (link_member(tarfile.SYMTYPE, "images/l", "sub"), None),
]

# What Python's data filter lets through and petseg refuses by hand: each archive, then the refusal.
FILTER_LETS_THROUGH = {
    "absolute name (the filter would strip its '/' and extract it inside)": (
        [file_member("/images/abs.jpg")], "it has an absolute path"),
    "a member overwriting an earlier one of the same name": (
        [file_member("images/a.jpg"), file_member("./images/a.jpg")],
        "an earlier member of the archive has the same path"),
    "a file where an earlier member made a directory": (
        [file_member("images/d/a.jpg"), file_member("images/d")], "an earlier member of the archive has the same path"),
    "a file written through an earlier link": (
        [*LINK_TO_SUB, file_member("images/l/a.jpg")],
        "it lies under 'images/l', an earlier member that is a file or a link"),
    "a link whose target goes through another link (how the filter's known bypasses start)": (
        [*LINK_TO_SUB, (link_member(tarfile.SYMTYPE, "images/m", "l/../a.jpg"), None)],
        "its target 'l/../a.jpg' goes through 'images/l', another link of the archive"),
    "a hard link to no earlier file (tarfile alone fails with a KeyError)": (
        [(link_member(tarfile.LNKTYPE, "images/h.jpg", "images/missing.jpg"), None)],
        "it is a hard link to 'images/missing.jpg', which is not an earlier file of the archive"),
}


@pytest.mark.parametrize("case", list(FILTER_LETS_THROUGH))
def test_what_the_data_filter_lets_through_is_refused_by_hand(tmp_path, case):
    members, why = FILTER_LETS_THROUGH[case]
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        for info, content in [*members, file_member("images/after.jpg")]:
            tar.addfile(info, content)
    plain = tmp_path / "plain"  # the filter on its own raises no FilterError for this archive
    plain.mkdir()
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(plain, filter="data")
        except (KeyError, OSError):
            pass
    target = tmp_path / "target"
    target.mkdir()
    refused = members[-1][0].name
    with pytest.raises(UnsafeArchiveError) as raised:
        safe_extract(archive, target)
    assert str(raised.value) == f"bad.tar: refused member {refused!r}: {why}"
    assert not (target / "images" / "after.jpg").exists()


def test_an_archive_with_no_members_is_refused(tmp_path):
    archive = tmp_path / "empty.tar.gz"
    archive.write_bytes(tar_gz({}))
    with pytest.raises(UnsafeArchiveError, match="empty.tar.gz: refused: the archive holds no members"):
        safe_extract(archive, tmp_path)


def test_unreachable_server_fails_after_retries_with_one_line_naming_the_url(cwd):
    url = closed_port_url()
    result = run_download(cwd, url)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{url}images.tar.gz" in errors[0] and "refused" in errors[0].lower()
    assert len([line for line in result.stderr.splitlines() if "retry" in line]) == FAST.retries


def test_a_stalled_server_times_out(release, server, cwd):
    server.stall_after[IMAGES] = 0
    (cwd / "petseg.toml").write_text("[download]\nretries = 0\nread_timeout = 0.3\n")
    start = time.monotonic()
    result = run_download(cwd, server.url, *release.md5_args)
    assert result.returncode == 1 and "timed out" in result.stderr and f"{server.url}images.tar.gz" in result.stderr
    assert time.monotonic() - start < 20


def test_the_second_source_is_used_when_the_first_fails(release, server, tmp_path):
    dead = closed_port_url()
    result = download(tmp_path / "pets", bases=[dead, server.url], settings=release.settings)
    assert result.inventory is not None and result.inventory.images == 7
    marker = json.loads((tmp_path / "pets" / MARKER).read_text())
    assert marker["sources"] == {name: f"{server.url}{name}" for name in ("images.tar.gz", "annotations.tar.gz")}


def test_mirror_flag_beats_environment_beats_petseg_toml(release, server, cwd):
    dead = closed_port_url()
    (cwd / "petseg.toml").write_text(FAST_TOML + f"mirror = '{dead}'\n")
    from_env = invoke_cli("download", "--data-dir", DATA, *release.md5_args, cwd=cwd, env={"PETSEG_MIRROR": server.url})
    assert from_env.returncode == 0, from_env.stderr
    from_flag = run_download(cwd, dead, *release.md5_args, "--force", env={"PETSEG_MIRROR": server.url})
    assert from_flag.returncode == 1 and dead in from_flag.stderr
    assert len(server.requests) == 2


def test_the_decode_once_cache_in_the_data_directory_does_not_block_a_download(release, server, tmp_path):
    data = tmp_path / "pets"
    download(data, bases=[server.url], settings=release.settings)
    (data / CACHE_DIRNAME / "train-256-0123").mkdir(parents=True)  # what `petseg train` leaves there
    again = download(data, bases=[server.url], settings=release.settings)
    assert again.inventory is None and "already complete and verified" in again.note
    forced = download(data, bases=[server.url], settings=release.settings, force=True)
    assert forced.inventory is not None and not (data / CACHE_DIRNAME).exists()  # stale with the old files


def test_a_directory_with_other_files_is_never_replaced(release, server, tmp_path):
    data = tmp_path / "pets"
    (data / "images").mkdir(parents=True)
    (data / "notes.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(PetsegError, match=r"holds files that are not part of the dataset \(notes.txt\)"):
            download(data, bases=[server.url], settings=release.settings, force=force)
    assert snapshot(data) == {"notes.txt": b"mine"} and server.requests == []


def test_an_incomplete_dataset_petseg_did_not_make_is_replaced_only_with_force(release, server, tmp_path):
    data = tmp_path / "pets"
    (data / "images").mkdir(parents=True)
    (data / "images" / "a.jpg").write_bytes(b"half an extraction")
    with pytest.raises(PetsegError, match="petseg download --data-dir .*pets --force"):
        download(data, bases=[server.url], settings=release.settings)
    assert snapshot(data) == {"images/a.jpg": b"half an extraction"} and server.requests == []
    download(data, bases=[server.url], settings=release.settings, force=True)
    assert not (data / "images" / "a.jpg").exists() and (data / MARKER).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pets"]


def test_archives_without_the_release_layout_are_refused(release, server, tmp_path):
    server.files[ANNOTATIONS] = tar_gz({"annotations/trainval.txt": b"x 1 1 1\n"})
    with pytest.raises(PetsegError, match="annotations/trimaps, annotations/test.txt"):
        download(tmp_path / "pets", bases=[server.url], settings=Release(server.files).settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.tar.gz", "images.tar.gz"]


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["pictures=" + "0" * 32], "images or annotations"),
        (["images=xyz"], "32 hexadecimal"),
        (["images"], "NAME=HASH"),
    ],
)
def test_md5_overrides_are_checked(items, message):
    with pytest.raises(UsageError, match=message):
        expected_checksums(DownloadSettings(**md5_overrides(items)))


def test_md5_override_replaces_only_the_archive_it_names():
    checksums = expected_checksums(DownloadSettings(**md5_overrides(["annotations=" + "A" * 32])))
    assert checksums == {"images": "5c4f3ee8e5d25df40f4fd59a7f44e54c", "annotations": "a" * 32}


@pytest.mark.parametrize("there", ["nothing", "an empty directory", "a part of petseg's", "a part of another's", "photos"])
def test_missing_data_names_a_download_command_that_works_there(release, server, cwd, there):
    """The command the message names, run as written (the release served by the test's mirror) gets the
    dataset; a directory of the user's photos is left as it was, the dataset going beside it."""
    data = cwd / "my pets"
    if there != "nothing":
        data.mkdir()
    if there.startswith("a part"):  # images/ and nothing else: an interrupted copy
        (data / "images").mkdir()
        (data / MARKER).write_text("{}") if there == "a part of petseg's" else None
    if there == "photos":
        (data / "cat.jpg").write_bytes(b"my photo")
    with pytest.raises(DataMissingError) as caught:
        split_samples(data, "train")
    command = shlex.split(str(caught.value).rpartition(" with: ")[2])
    assert command[:2] == ["petseg", "download"] and ("--force" in command) == (there == "a part of another's"), command
    (cwd / "petseg.toml").write_text(FAST_TOML + "".join(f"{k}_md5 = '{v}'\n" for k, v in release.checksums.items()))
    result = invoke_cli(*command[1:], cwd=cwd, env={"PETSEG_MIRROR": server.url})
    assert result.returncode == 0 and "Oxford-IIIT Pet is ready" in result.stdout, result.stderr
    assert split_samples(Path(command[command.index("--data-dir") + 1]), "train")
    if there == "photos":
        assert (data / "cat.jpg").read_bytes() == b"my photo" and sorted(p.name for p in data.iterdir()) == ["cat.jpg"]


@pytest.mark.slow
def test_train_with_download_fetches_the_dataset_then_trains(release, server, cwd):
    md5s = "".join(f"{name}_md5 = '{md5}'\n" for name, md5 in release.checksums.items())
    (cwd / "petseg.toml").write_text(FAST_TOML + md5s)
    args = ["--data-dir", DATA, "-e", "1", "-b", "2", "--image-size", "32", "--model", "resnet34-unet"]
    env = {"PETSEG_MIRROR": server.url, "OMP_NUM_THREADS": "1"}  # one thread: quicker on a busy machine
    result = run_cli("train", "--download", *args, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    assert "Oxford-IIIT Pet is ready" in result.stdout and (cwd / "runs" / "resnet34-unet-bs2" / "best.pth").exists()
    assert len(server.requests) == 2


NOISE_BYTES = 3 * 2**20  # incompressible: the images archive grows by as much as it unpacks to


@pytest.fixture(scope="module")
def larger_release(release) -> Release:
    """The release plus 3 MiB of noise among the images: more than the small disks below can hold."""
    noise = random.Random(0).randbytes(NOISE_BYTES)
    return packed({**release.content, "images/zz_noise.jpg": noise})


def can_mount_tmpfs(directory: Path) -> bool:
    probe = f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(directory))}"
    return subprocess.run(["unshare", "--mount", "sh", "-c", probe], capture_output=True).returncode == 0


# How the second download meets a full disk: (shell line run first, prefix of petseg, what the OS says).
DISKS = {
    # data/ becomes a 4 MiB tmpfs (in a private mount namespace) holding a copy of the previous dataset:
    # the 3 MiB archive arrives, unpacking it does not fit.
    "tmpfs": ("mount -t tmpfs -o size=4m tmpfs data && cp -a ../previous/. data/", "", "No space left on device"),
    # The kernel lets no file of the petseg process grow past 1 MiB: the archive itself cannot arrive.
    "file size limit": ("true", "prlimit --fsize=1048576", "File too large"),
}


@pytest.mark.slow
@pytest.mark.parametrize("disk", DISKS)
def test_a_full_disk_fails_with_one_line_and_the_previous_dataset_is_intact(release, larger_release, tmp_path, disk):
    home, (setup, prefix, says) = tmp_path / "home", DISKS[disk]
    home.mkdir()
    (home / "petseg.toml").write_text(FAST_TOML)
    if disk == "tmpfs" and not can_mount_tmpfs(tmp_path):
        pytest.skip("cannot mount a tmpfs here (needs unshare and mount rights)")
    # The previous dataset, a verified download of the small release.
    small = ReleaseServer(release.files)
    threading.Thread(target=small.serve_forever, daemon=True).start()
    try:
        download(home / DATA, bases=[small.url], settings=release.settings)
    finally:
        small.shutdown()
        small.server_close()
    before = snapshot(home / DATA)
    if disk == "tmpfs":  # the copy the tmpfs starts from; the real data/ stays hidden under the mount
        subprocess.run(["cp", "-a", str(home / "data"), str(tmp_path / "previous")], check=True)

    larger = ReleaseServer(larger_release.files)
    threading.Thread(target=larger.serve_forever, daemon=True).start()
    petseg = [sys.executable, "-m", "petseg_cli", "download", "--data-dir", DATA, "--mirror", larger.url,
              *larger_release.md5_args, "--force"]
    # What data/ holds afterwards is copied out before the mount namespace ends.
    script = f"""{setup} || exit 99
    {prefix} {shlex.join(petseg)}
    code=$?
    cp -a data ../after
    exit $code"""
    command = ["unshare", "--mount", "sh", "-c", script] if disk == "tmpfs" else ["sh", "-c", script]
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    try:
        result = subprocess.run(command, cwd=home, env=env, capture_output=True, text=True, timeout=300)
    finally:
        larger.shutdown()
        larger.server_close()

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: disk error: ") and says in last and "then run the command again" in last, last
    assert [path for path, _ in larger.requests][:1] == [IMAGES]  # it did try: the failure is the disk's
    after = tmp_path / "after"
    assert snapshot(after / "pets") == before  # every file of the previous dataset, byte for byte
    assert not [p.name for p in after.iterdir() if p.name.startswith(".pets.")]  # no staging directory left


@pytest.mark.parametrize("beside", [{}, {"README": "Oxford-IIIT Pet, copied from the lab's share\n", "SOURCES": "images.tar.gz\n"}])
def test_a_complete_dataset_already_there_is_recognised_and_left_as_it_is(beside, server, tmp_path):
    """A local copy (images/, annotations/ with the split lists), with or without notes beside it: exit 0,
    nothing fetched, nothing changed, and the output says the dataset is there."""
    data = make_dataset(tmp_path / DATA)
    for name, text in beside.items():
        (data / name).write_text(text)
    before = snapshot(data)
    result = run_download(tmp_path, server.url)
    assert result.returncode == 0, result.stderr
    assert f"{DATA} already holds the dataset" in result.stdout and "choose another" not in result.stdout + result.stderr
    assert server.requests == [] and snapshot(data) == before
    if beside:  # --force would replace the notes with the release: refused, as before
        forced = run_download(tmp_path, server.url, "--force")
        assert forced.returncode == 1 and "holds files that are not part of the dataset (README, SOURCES)" in forced.stderr
        assert server.requests == [] and snapshot(data) == before
