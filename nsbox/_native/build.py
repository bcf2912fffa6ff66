"""cffi build script (out-of-line API mode) for nsbox._native._nsbox.

It only reads the declarations beside it (nsbox.h, shared with the C code;
constants.cdef, kernel constants whose values come from the system headers)
and compiles spawn.c.
"""
import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef((HERE / "nsbox.h").read_text())
ffibuilder.cdef((HERE / "constants.cdef").read_text())
ffibuilder.set_source(
    "nsbox._native._nsbox",
    '#define _GNU_SOURCE\n#include <fcntl.h>\n#include <sched.h>\n#include <sys/mount.h>\n#include "nsbox.h"',
    # setuptools wants source paths relative to the project root (the cwd).
    sources=[os.path.relpath(HERE / "spawn.c")],
    include_dirs=[os.path.relpath(HERE)],
    depends=[os.path.relpath(HERE / name) for name in ("nsbox.h", "fds.h")],
    extra_compile_args=["-O2", "-Wall"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
