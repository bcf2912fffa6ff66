"""Build glue: the cffi extension (cffi_modules) and the holder executable.

``pip install .`` compiles nsbox/_native/init.c into nsbox/_native/nsbox-init
inside the built package; nothing is compiled at import time.
"""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_ext import build_ext

INIT_SRC = os.path.join("nsbox", "_native", "init.c")
INIT_NAME = "nsbox-init"


def _compilers():
    """The C compilers to try for a static nsbox-init: $NSBOX_INIT_CC, or
    musl-gcc when installed, then $CC (or cc)."""
    if os.environ.get("NSBOX_INIT_CC"):
        return [os.environ["NSBOX_INIT_CC"]]
    found = [cc for cc in ("musl-gcc",) if shutil.which(cc)]
    return found + [os.environ.get("CC", "cc")]


class BuildExtWithInit(build_ext):
    def run(self):
        super().run()
        self.build_init()

    def build_init(self):
        if self.inplace:
            out_dir = os.path.join("nsbox", "_native")
        else:
            out_dir = os.path.join(self.build_lib, "nsbox", "_native")
        os.makedirs(out_dir, exist_ok=True)
        out = os.path.join(out_dir, INIT_NAME)
        version = self.distribution.get_version()
        flags = ["-Os", "-Wall", "-Wextra", f'-DNSBOX_VERSION="{version}"', "-o", out, INIT_SRC]
        # Static like the Kubernetes pause image: no dynamic loader, tiny PSS.
        # musl first: glibc's static start-up asks CPUID for cache sizes, a
        # trap to the hypervisor in a VM: 0.66 ms per holder start here,
        # against 0.1 ms with musl (issue 13; Debian: musl-tools).
        tries = [[cc, *flags, "-static", "-s"] for cc in _compilers()]
        tries.append([os.environ.get("CC", "cc"), *flags])
        for i, cmd in enumerate(tries):
            try:
                subprocess.run(cmd, check=True)
                break
            except (OSError, subprocess.CalledProcessError):
                if i == len(tries) - 1:
                    raise
                self.warn(f"{' '.join(cmd[:1])}: static link of nsbox-init failed; trying the next way")
        os.chmod(out, 0o755)

    def get_outputs(self):
        outputs = super().get_outputs()
        if not self.inplace:
            outputs.append(os.path.join(self.build_lib, "nsbox", "_native", INIT_NAME))
        return outputs


setup(
    cffi_modules=["nsbox/_native/build.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtWithInit},
)
