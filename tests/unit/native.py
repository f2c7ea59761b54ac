"""Import ``convai._native`` for unit tests, compiling it with cffi on the spot if needed.

Inside the testbed meson has built it; on the host (Python 3.11) it is built here, from the
same builder and header the module uses.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import convai

ROOT = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    try:
        return importlib.import_module("convai._native")
    except ImportError:
        pass
    sys.path.insert(0, str(ROOT / "python" / "convai"))
    try:
        from _native_build import make_ffi  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    out = Path(tempfile.mkdtemp(prefix="convai-native-"))
    ffi = make_ffi(include_dirs=[str(ROOT / "c")], extra_compile_args=["-std=gnu11"])
    ffi.compile(tmpdir=str(out), verbose=False)
    convai.__path__.append(str(out / "convai"))
    return importlib.import_module("convai._native")
