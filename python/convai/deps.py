"""What the Python side needs, and the check the module runs before it imports any of it.

The minimum versions live here and nowhere else: meson.build reads them (``deps.py missing``
decides what ``-Dpython_deps=auto`` bundles, ``deps.py minimum python`` is the Python floor),
the embedded host calls :func:`check` before importing ``convai.host``, and docs/INSTALL.md's
table is checked against them by tests/unit/test_deps.py.

Standard library only, and nothing here imports a dependency except cffi's small C backend: a
check that imported an old websockets would leave it in the interpreter, which the module keeps
for the life of Asterisk, and a later ``module load`` would fail even after an upgrade.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys

MINIMUM_PYTHON = (3, 11)
# websockets 13 has the new asyncio client (websockets.asyncio.client); aiohttp 3.8 and cffi 1.15
# are Debian 12's, the oldest the module is tested with.
MINIMUM = {"websockets": "13.0", "aiohttp": "3.8", "cffi": "1.15"}
# What -Dpython_deps can bundle from python/deps.lock (cffi is needed at build time already:
# the distribution's is used).
BUNDLED = ("websockets", "aiohttp")

FIX_BUNDLE = (
    "rebuild with the bundled copy (meson setup --reconfigure -Dpython_deps=auto BUILDDIR && "
    "meson install -C BUILDDIR)"
)
FIX_APT = {
    "websockets": "apt install python3-websockets",
    "aiohttp": "apt install python3-aiohttp",
    "cffi": "apt install python3-cffi-backend",
}


def parse(version: str) -> tuple[int, ...]:
    """'13.1.post1' -> (13, 1): the release numbers, enough to compare with a minimum."""
    m = re.match(r"\d+(?:\.\d+)*", version.strip())
    return tuple(int(x) for x in m.group(0).split(".")) if m else ()


def installed(name: str) -> tuple[str, str] | None:
    """(version, where) of the first distribution of ``name`` on sys.path, without importing it."""
    if name == "cffi":
        # The run-time part is the C backend (Debian ships it without cffi's metadata); it is
        # small, has no dependencies and is what the module loads anyway.
        try:
            import _cffi_backend  # type: ignore[import-untyped]
        except ImportError:
            return None
        return str(_cffi_backend.__version__), os.path.dirname(_cffi_backend.__file__ or "?")
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    where = str(dist.locate_file(""))
    return dist.version, where


def _loaded_version(name: str) -> str | None:
    mod = sys.modules.get(name)
    if mod is None:
        return None
    version = getattr(mod, "__version__", None)
    return str(version) if version is not None else "?"


def check(python_dir: str = "") -> str | None:
    """None when every dependency is there and new enough; else one line naming the package,
    the version found, the minimum and the fix."""
    importlib.invalidate_caches()  # a pip install since the last attempt is seen
    if sys.version_info < MINIMUM_PYTHON:
        found = ".".join(map(str, sys.version_info[:3]))
        need = ".".join(map(str, MINIMUM_PYTHON))
        return (
            f"Python {found} is too old: the module needs Python >= {need}; fix: build it "
            f"against a newer Python (put it first on PATH for meson setup)"
        )
    for name, minimum in MINIMUM.items():
        loaded = _loaded_version(name)
        if loaded is not None and parse(loaded) < parse(minimum):
            return (
                f"{name} {loaded} is too old (the module needs >= {minimum}) and an earlier "
                f"failed load left it imported in this Asterisk's Python; fix: restart Asterisk "
                f"(core restart gracefully) after installing a newer {name}"
            )
        got = installed(name)
        bundle = f" or {FIX_BUNDLE}" if name in BUNDLED else ""
        if got is None:
            return (
                f"{name} is missing: the module needs {name} >= {minimum}; "
                f"fix: {FIX_APT[name]}{bundle}"
            )
        version, where = got
        if parse(version) < parse(minimum):
            return (
                f"{name} {version} (in {where}) is too old: the module needs {name} >= "
                f"{minimum}; fix: {FIX_BUNDLE if bundle else FIX_APT[name]}"
            )
    return None


def restart_note() -> str:
    """After a failed import: a note when a dependency it left imported forces a restart."""
    left = [f"{n} {_loaded_version(n)}" for n in MINIMUM if n != "cffi" and n in sys.modules]
    if not left:
        return ""
    return (
        f" (the failed attempt left {', '.join(left)} imported: restart Asterisk before "
        f"loading the module again)"
    )


# ---- build time: what meson runs ----------------------------------------------------------------


def missing() -> list[str]:
    """The bundleable packages this Python lacks or has too old (what python_deps=auto installs)."""
    out = []
    for name in BUNDLED:
        got = installed(name)
        if got is None or parse(got[0]) < parse(MINIMUM[name]):
            out.append(name)
    return out


def lock_sections(lock: str) -> dict[str, list[str]]:
    """python/deps.lock: requirement lines (with their hashes) under '# [package]' headers."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    entry = ""
    with open(lock, encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            header = re.fullmatch(r"# \[([a-z0-9-]+)\]", line)
            if header:
                current = sections.setdefault(header.group(1), [])
                continue
            if current is None or not line.strip() or line.lstrip().startswith("#"):
                continue
            entry += line.rstrip("\\").strip() + " "
            if not line.endswith("\\"):
                current.append(entry.strip())
                entry = ""
    return sections


def install(target: str, lock: str, names: list[str]) -> int:
    """pip-install the locked sections ``names`` into ``target`` (with hashes, no resolver)."""
    sections = lock_sections(lock)
    reqs: list[str] = []
    for name in names:
        if name not in sections:
            print(f"deps.py: no [{name}] section in {lock}", file=sys.stderr)
            return 2
        reqs += [r for r in sections[name] if r not in reqs]
    req_file = os.path.join(target, ".bundle-requirements.txt")
    os.makedirs(target, exist_ok=True)
    with open(req_file, "w", encoding="utf-8") as f:
        f.write("\n".join(reqs) + "\n")
    bin_existed = os.path.isdir(os.path.join(target, "bin"))
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    cmd += ["--root-user-action=ignore"]
    cmd += ["--no-deps", "--require-hashes", "--only-binary=:all:", "--upgrade"]
    cmd += ["--no-compile", "--target", target, "-r", req_file]
    pins = " ".join(r.split()[0] for r in reqs)
    print(f"bundling {', '.join(names)} into {target}: {pins}", flush=True)
    rc = subprocess.call(cmd)
    os.unlink(req_file)
    if not bin_existed:  # console scripts (bin/websockets): nothing the module runs
        shutil.rmtree(os.path.join(target, "bin"), ignore_errors=True)
    return rc


def _main(argv: list[str]) -> int:
    if argv[:1] == ["missing"]:
        print(" ".join(missing()))
    elif argv[:1] == ["bundled"]:
        print(" ".join(BUNDLED))
    elif argv[:1] == ["minimum"] and len(argv) == 2:
        print(".".join(map(str, MINIMUM_PYTHON)) if argv[1] == "python" else MINIMUM[argv[1]])
    elif argv[:1] == ["check"]:
        problem = check()
        print(problem or "ok")
        return 1 if problem else 0
    elif argv[:1] == ["install"] and len(argv) >= 4:
        # meson's install script: DESTDIR is applied through MESON_INSTALL_DESTDIR_PREFIX.
        target, lock, names = argv[1], argv[2], argv[3:]
        destdir = os.environ.get("DESTDIR", "")
        if destdir and os.path.isabs(target):
            target = os.path.join(destdir, target.lstrip("/"))
        return install(target, lock, names)
    else:
        print(
            "usage: deps.py missing | bundled | minimum NAME | check | install TARGET LOCK NAME..."
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
