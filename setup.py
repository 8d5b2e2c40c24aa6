"""Build of the compiled core. All Cython directives live here (one place).

A missing compiler or a failed compile fails the install: there is no silent pure-Python fallback
(FASTGUARD_NO_EXTENSIONS=1 selects the pure core explicitly at run time).
"""

import os
import subprocess

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

#: GCC's inlining limits: the decision loops are one function each once inlined (measured faster with them).
GCC_ONLY = ["--param=max-inline-insns-single=4000", "--param=large-function-growth=2000",
            "--param=inline-unit-growth=400"]

DIRECTIVES = {
    "language_level": 3,
    "embedsignature": True,
    # Every division in the core has non-negative operands and a positive divisor (counts, periods):
    # C division is exact there and needs no Python-semantics fix-ups.
    "cdivision": True,
    "initializedcheck": False,
    # Methods as plain C functions (METH_FASTCALL), not Cython function objects: a call costs less.
    "binding": False,
}

extensions = [
    Extension(
        "fastguard._core",
        ["fastguard/_core.pyx"],
        include_dirs=["fastguard"],          # core/fastguard_core.h
        depends=["fastguard/_core.pxd", "fastguard/core/fastguard_core.h"],
    )
]


def _is_gcc(command: list[str]) -> bool:
    """Whether the compiler is GCC (clang also calls itself `cc` and `gcc` on some systems: ask it)."""
    try:
        out = subprocess.run([command[0], "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError, IndexError):
        return False
    return "Free Software Foundation" in out and "clang" not in out.lower()


class BuildExt(build_ext):
    """Compile flags by compiler: -O3 where the compiler takes GCC-style flags, GCC's --param only for GCC, none
    for MSVC (musllinux, manylinux, macOS clang and Windows wheels all build from the same setup)."""

    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "unix":
            flags = ["-O3", "-fno-strict-aliasing"]
            if _is_gcc(self.compiler.compiler_so):
                flags += GCC_ONLY
            for ext in self.extensions:
                ext.extra_compile_args = flags + list(ext.extra_compile_args or [])
        super().build_extensions()


setup(
    cmdclass={"build_ext": BuildExt},
    ext_modules=cythonize(
        extensions,
        compiler_directives=DIRECTIVES,
        annotate=os.environ.get("FASTGUARD_ANNOTATE") == "1",
    ),
)
