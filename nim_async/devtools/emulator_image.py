"""Build the emulator's container image offline, from this host's Python.

The image is a stand-in for a NIM image in tests and demos: it serves the NIM HTTP surface
with the emulator (not a model) on port 8000. No base image and no network are needed: the
root filesystem is assembled from

* the running interpreter (binary, ``libpython`` and the shared libraries they link),
* a trimmed standard library (no tests, tkinter, idlelib, ...),
* only the site-packages distributions the emulator imports (found with ``importlib.metadata``:
  the import closure of ``nim_async.emulator`` plus aiohttp, Pillow, pydantic and orjson, and
  everything they require),
* the ``nim_async`` package itself,

and sent to the Docker engine as a build context (``FROM scratch``; three layers: runtime,
dependencies, application). The command is ``python3 -m nim_async.emulator --host 0.0.0.0``.

Usage::

    python -m nim_async.devtools.emulator_image \
        --tag 127.0.0.1:5000/nim/nvidia/cosmos-reason1-7b:emu
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path

import orjson

from nim_async.deploy.docker import DockerClient

__all__ = ["build_emulator_image", "emulator_image_fingerprint", "main"]

IMAGE_FORMAT = "3"  # bump when the layout below changes, so fingerprints change too
CONTAINER_PREFIX = "/usr/local"
BASE_DISTRIBUTIONS = ("aiohttp", "pillow", "pydantic", "orjson")
TRACE_MODULES = ("nim_async.emulator", "nim_async.emulator.cli")
IMAGE_LABEL = "nim_async.emulator"
CMD = ["python3", "-m", "nim_async.emulator", "--host", "0.0.0.0"]

_STDLIB_EXCLUDE = {
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "site-packages",
    "dist-packages",
    "distutils",
    "venv",
    "__phello__",
}
_NEVER = {"nim-async", "setuptools", "pip", "wheel"}
_DYNLOAD_EXCLUDE = re.compile(r"(_test|_tkinter|xxlimited|xxsubtype|_xx)")
_PYC_OK = re.compile(rf"\.cpython-{sys.version_info[0]}{sys.version_info[1]}\.pyc$")


def _norm_dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed() -> dict[str, metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(_norm_dist(name), dist)
    return found


def _traced_top_modules() -> set[str]:
    """Top-level modules the emulator imports, from a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {list(TRACE_MODULES)!r}:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception:\n"
        "        pass\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, env=env, timeout=120
    ).stdout
    names: list[str] = orjson.loads(out.strip().splitlines()[-1])
    return set(names)


def _requirement_names(dist: metadata.Distribution) -> Iterator[str]:
    for req in dist.requires or ():
        if ";" in req and "extra" in req.split(";", 1)[1]:
            continue
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
        if match:
            yield _norm_dist(match.group(1))


def _select_distributions() -> list[metadata.Distribution]:
    """The site-packages distributions the image needs (closure over requirements)."""
    installed = _installed()
    roots = {_norm_dist(n) for n in BASE_DISTRIBUTIONS}
    mapping = metadata.packages_distributions()
    for module in _traced_top_modules():
        for dist_name in mapping.get(module, ()):
            roots.add(_norm_dist(dist_name))
    selected: dict[str, metadata.Distribution] = {}
    todo = sorted(roots)
    while todo:
        name = todo.pop()
        if name in selected or name in _NEVER or name not in installed:
            continue
        selected[name] = installed[name]
        todo.extend(_requirement_names(installed[name]))
    return [selected[k] for k in sorted(selected)]


def _package_dir() -> Path:
    import nim_async

    return Path(nim_async.__file__).resolve().parent


def _package_files() -> list[Path]:
    root = _package_dir()
    return sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith((".pyc", ".pyo"))
    )


def emulator_image_fingerprint() -> str:
    """A short hash of everything the image is built from (to skip needless rebuilds).

    Covers the image layout version, the interpreter version, the selected distributions and
    their versions, and the content of every ``nim_async`` source file.

    Returns:
        16 hex digits.
    """
    digest = hashlib.sha256()
    digest.update(f"{IMAGE_FORMAT}|{sys.version}|{sys.platform}\n".encode())
    for dist in _select_distributions():
        digest.update(f"{dist.metadata['Name']}=={dist.version}\n".encode())
    root = _package_dir()
    for path in _package_files():
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------- rootfs


def _shared_libs(paths: Iterable[Path]) -> set[str]:
    """Shared libraries (absolute host paths) the given ELF files load, via ``ldd``."""
    libs: set[str] = set()
    items = [str(p) for p in paths]
    for start in range(0, len(items), 200):
        proc = subprocess.run(
            ["ldd", *items[start : start + 200]], capture_output=True, text=True, check=False
        )
        for line in proc.stdout.splitlines():
            line = line.strip()
            if "=>" in line:
                target = line.split("=>", 1)[1].strip().split(" (", 1)[0].strip()
            elif line.startswith("/"):
                target = line.split(" (", 1)[0].strip()
            else:
                continue
            if target.startswith("/") and os.path.exists(target):
                libs.add(target)
    return libs


def _container_lib_path(host_path: str, base_lib: Path) -> str:
    path = Path(host_path)
    if path.is_relative_to(base_lib):
        return f"{CONTAINER_PREFIX}/lib/{path.relative_to(base_lib)}"
    text = host_path
    for top in ("/lib/", "/lib64/", "/bin/", "/sbin/"):
        if text.startswith(top):
            return "/usr" + text
    return text


class _Layer:
    """A directory tree inside the build context (``<prefix>/...``)."""

    def __init__(self, tar: tarfile.TarFile, prefix: str) -> None:
        self.tar = tar
        self.prefix = prefix
        self.dirs: set[str] = set()

    def _ensure_dir(self, path: str, mode: int = 0o755) -> None:
        parts = [p for p in path.strip("/").split("/") if p]
        current = ""
        for part in parts:
            current = f"{current}/{part}"
            if current in self.dirs:
                continue
            self.dirs.add(current)
            info = tarfile.TarInfo(self.prefix + current)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if current == "/tmp" else mode
            self.tar.addfile(info)

    def add_file(self, host: Path, dest: str) -> None:
        self._ensure_dir(os.path.dirname(dest))
        info = self.tar.gettarinfo(str(host), arcname=self.prefix + dest)
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        if info.isfile():
            info.mode |= 0o444
            if info.mode & 0o100:
                info.mode |= 0o111
            with host.open("rb") as fh:
                self.tar.addfile(info, fh)
        elif info.issym():
            self.tar.addfile(info)

    def add_resolved(self, host: Path, dest: str) -> None:
        """Add a file, following symlinks (its content under ``dest``)."""
        self._ensure_dir(os.path.dirname(dest))
        real = host.resolve()
        info = self.tar.gettarinfo(str(real), arcname=self.prefix + dest)
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode |= 0o444
        with real.open("rb") as fh:
            self.tar.addfile(info, fh)

    def add_bytes(self, dest: str, data: bytes, mode: int = 0o644) -> None:
        self._ensure_dir(os.path.dirname(dest))
        info = tarfile.TarInfo(self.prefix + dest)
        info.size = len(data)
        info.mode = mode
        self.tar.addfile(info, io.BytesIO(data))

    def add_symlink(self, dest: str, target: str) -> None:
        self._ensure_dir(os.path.dirname(dest))
        info = tarfile.TarInfo(self.prefix + dest)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        self.tar.addfile(info)

    def add_dir(self, dest: str, mode: int = 0o755) -> None:
        self._ensure_dir(os.path.dirname(dest.rstrip("/")))
        self.dirs.add(dest.rstrip("/"))
        info = tarfile.TarInfo(self.prefix + dest.rstrip("/"))
        info.type = tarfile.DIRTYPE
        info.mode = mode
        self.tar.addfile(info)


def _walk_stdlib(stdlib: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(stdlib):
        here = Path(dirpath)
        rel = here.relative_to(stdlib)
        if rel == Path("."):
            dirnames[:] = [
                d for d in dirnames if d not in _STDLIB_EXCLUDE and not d.startswith("config-")
            ]
        else:
            dirnames[:] = [d for d in dirnames if d not in ("test", "tests", "idle_test")]
        for name in filenames:
            if rel.name == "__pycache__" and not _PYC_OK.search(name):
                continue
            if rel == Path("lib-dynload") and _DYNLOAD_EXCLUDE.search(name):
                continue
            if name.endswith((".exe", ".whl", ".a")):
                continue
            yield here / name


def _dist_files(dist: metadata.Distribution) -> Iterator[tuple[Path, str]]:
    """(host path, path relative to site-packages) of one installed distribution."""
    for item in dist.files or ():
        rel = str(item)
        if rel.startswith(("..", "/")) or (rel.endswith(".pyc") and not _PYC_OK.search(rel)):
            continue
        host = Path(str(dist.locate_file(item)))
        if host.is_file():
            yield host, rel


def _write_context(fileobj: io.BufferedRandom, *, quiet: bool) -> None:
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    base = Path(sys.base_prefix)
    stdlib = Path(sysconfig.get_path("stdlib", vars={"installed_base": sys.base_prefix}))
    base_lib = base / "lib"
    exe = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    site_dest = f"{CONTAINER_PREFIX}/lib/python{version}/site-packages"
    dists = _select_distributions()
    if not quiet:
        names = ", ".join(f"{d.metadata['Name']} {d.version}" for d in dists)
        print(f"emulator image: Python {version} from {exe}; packages: {names}", flush=True)

    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.GNU_FORMAT) as tar:
        # ---- layer 1: the runtime (interpreter, shared libraries, stdlib, base files)
        runtime = _Layer(tar, "runtime")
        runtime.add_resolved(exe, f"{CONTAINER_PREFIX}/bin/python{version}")
        runtime.add_symlink(f"{CONTAINER_PREFIX}/bin/python3", f"python{version}")
        runtime.add_symlink(f"{CONTAINER_PREFIX}/bin/python", f"python{version}")
        stdlib_dest = f"{CONTAINER_PREFIX}/lib/python{version}"
        elf: list[Path] = [exe]
        for path in _walk_stdlib(stdlib):
            runtime.add_file(path, f"{stdlib_dest}/{path.relative_to(stdlib)}")
            if path.suffix == ".so":
                elf.append(path)
        for top in ("lib", "lib64", "bin", "sbin"):
            runtime.add_symlink(f"/{top}", f"usr/{top}")
        runtime.add_dir("/tmp", 0o1777)
        runtime.add_dir("/opt/nim/.cache", 0o777)
        runtime.add_dir("/usr/lib64")
        runtime.add_bytes(
            "/etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        runtime.add_bytes("/etc/group", b"root:x:0:\nnogroup:x:65534:\n")

        # ---- layer 2: third-party distributions
        deps = _Layer(tar, "deps")
        for dist in dists:
            for host, rel in _dist_files(dist):
                deps.add_file(host, f"{site_dest}/{rel}")
                if host.suffix == ".so" or ".so." in host.name:
                    elf.append(host)

        # shared libraries of everything collected so far (into the runtime layer)
        dep_files = {str(p) for p in elf}
        for lib in sorted(_shared_libs(elf)):
            if lib in dep_files or "site-packages" in lib:
                continue  # a wheel's own bundled library: already shipped with it
            runtime.add_resolved(Path(lib), _container_lib_path(lib, base_lib))

        # ---- layer 3: nim_async itself
        app = _Layer(tar, "app")
        root = _package_dir()
        for path in _package_files():
            app.add_file(path, f"{site_dest}/nim_async/{path.relative_to(root)}")
        try:
            pkg_version = metadata.version("nim-async")
        except metadata.PackageNotFoundError:
            pkg_version = "0"
        info = f"{site_dest}/nim_async-{pkg_version}.dist-info"
        app.add_bytes(
            f"{info}/METADATA",
            f"Metadata-Version: 2.1\nName: nim-async\nVersion: {pkg_version}\n".encode(),
        )
        app.add_bytes(f"{info}/top_level.txt", b"nim_async\n")

        env = {
            "PATH": f"{CONTAINER_PREFIX}/bin:/usr/bin:/bin",
            "LD_LIBRARY_PATH": f"{CONTAINER_PREFIX}/lib:/usr/lib/x86_64-linux-gnu:"
            "/usr/lib/aarch64-linux-gnu:/usr/lib64:/usr/lib",
            "PYTHONHOME": CONTAINER_PREFIX,
            "PYTHONPATH": site_dest,  # Debian-patched interpreters look in dist-packages only
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "NIM_CACHE_PATH": "/opt/nim/.cache",
        }
        env_lines = "".join(f"ENV {k}={v}\n" for k, v in env.items())
        dockerfile = (
            "FROM scratch\n"
            "COPY runtime/ /\n"
            "COPY deps/ /\n"
            "COPY app/ /\n"
            f"{env_lines}"
            "WORKDIR /tmp\n"
            "EXPOSE 8000\n"
            f"CMD {orjson.dumps(CMD).decode()}\n"
        )
        data = dockerfile.encode()
        df = tarfile.TarInfo("Dockerfile")
        df.size = len(data)
        df.mode = 0o644
        tar.addfile(df, io.BytesIO(data))


async def build_emulator_image(tag: str, *, quiet: bool = False) -> str:
    """Build the emulator's container image and tag it ``tag``.

    Works offline: no base image is pulled (see the module docstring).

    Args:
        tag: Image reference to tag, e.g.
            ``127.0.0.1:5000/nim/nvidia/cosmos-reason1-7b:emu``.
        quiet: Print nothing.

    Returns:
        The image id (``sha256:...``).

    Raises:
        DockerUnavailableError: If the Docker daemon cannot be reached.
        APIError: If the engine fails to build the image.
    """
    fingerprint = await asyncio.to_thread(emulator_image_fingerprint)
    with tempfile.TemporaryFile() as context:
        await asyncio.to_thread(_write_context, context, quiet=quiet)
        size = context.tell()
        context.seek(0)
        if not quiet:
            print(f"emulator image: build context {size / 1e6:.1f} MB; building {tag}", flush=True)
        async with DockerClient() as docker:
            async for item in docker.build_image(
                context,
                tag,
                labels={IMAGE_LABEL: "true", f"{IMAGE_LABEL}.fingerprint": fingerprint},
            ):
                text = item.get("stream")
                if text and not quiet and text.strip().startswith("Step"):
                    print(f"  {text.strip()}", flush=True)
            info = await docker.image_info(tag)
    image_id = str(info["Id"])
    if not quiet:
        print(f"emulator image: built {tag} ({image_id[:19]}, {info.get('Size', 0) / 1e6:.0f} MB)")
    return image_id


async def build_emulator_variant(
    docker: DockerClient,
    base: str,
    tag: str,
    emulator_args: Iterable[str],
    *,
    labels: Mapping[str, str] | None = None,
) -> None:
    """Build ``tag`` from the emulator image ``base``, running the emulator with extra flags.

    For tests and benchmarks that need a container that misbehaves on purpose, e.g.
    ``("--exit-after", "1")`` or ``("--startup-seconds", "30")``. ``base`` must be present
    locally (pull it first).

    Args:
        docker: A connected Docker client.
        base: The emulator image to build on.
        tag: Reference to tag the new image with.
        emulator_args: Flags appended to the emulator's command line.
        labels: Image labels.

    Raises:
        APIError: If the engine fails to build the image.
    """
    cmd = [*CMD, *emulator_args]
    dockerfile = f"FROM {base}\nCMD {orjson.dumps(cmd).decode()}\n".encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    async for _ in docker.build_image(context, tag, labels=labels):
        pass


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m nim_async.devtools.emulator_image --tag REF``.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m nim_async.devtools.emulator_image",
        description="Build the NIM emulator's container image offline (an emulator, not a model).",
    )
    parser.add_argument("--tag", help="image reference to tag the image with")
    parser.add_argument("--quiet", action="store_true", help="print only the image id")
    parser.add_argument(
        "--fingerprint",
        action="store_true",
        help="print the hash of the image inputs and exit (nothing is built)",
    )
    args = parser.parse_args(argv)
    if args.fingerprint:
        print(emulator_image_fingerprint())
        return 0
    if not args.tag:
        parser.error("--tag is required")
    from nim_async.errors import NIMError

    try:
        image_id = asyncio.run(build_emulator_image(args.tag, quiet=args.quiet))
    except NIMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.quiet:
        print(image_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
