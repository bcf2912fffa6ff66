"""cffi build script (out-of-line API mode) for nsbox._native._nsbox.

It only reads nsbox.h (the declarations) and spawn.c (the code) beside it.
"""
import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef((HERE / "nsbox.h").read_text())
ffibuilder.set_source(
    "nsbox._native._nsbox",
    '#include "nsbox.h"',
    # setuptools wants source paths relative to the project root (the cwd).
    sources=[os.path.relpath(HERE / "spawn.c")],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=["-O2", "-Wall"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
