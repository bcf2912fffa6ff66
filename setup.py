"""Build glue: the cffi extension (cffi_modules) and the holder executable.

``pip install .`` compiles nsbox/_native/init.c into nsbox/_native/nsbox-init
inside the built package; nothing is compiled at import time.
"""
import os
import subprocess

from setuptools import setup
from setuptools.command.build_ext import build_ext

INIT_SRC = os.path.join("nsbox", "_native", "init.c")
INIT_NAME = "nsbox-init"


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
        cc = os.environ.get("CC", "cc")
        version = self.distribution.get_version()
        base = [cc, "-Os", "-Wall", "-Wextra", f'-DNSBOX_VERSION="{version}"', "-o", out, INIT_SRC]
        # Static like the Kubernetes pause image: no dynamic loader, tiny PSS.
        try:
            subprocess.run(base + ["-static", "-s"], check=True)
        except subprocess.CalledProcessError:
            self.warn("static link of nsbox-init failed (no libc.a?); linking dynamically")
            subprocess.run(base, check=True)
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
