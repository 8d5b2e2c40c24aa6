"""Build of the compiled core. All Cython directives live here (one place).

A missing compiler or a failed compile fails the install: there is no silent pure-Python fallback
(FASTGUARD_NO_EXTENSIONS=1 selects the pure core explicitly at run time).
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

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
        extra_compile_args=["-O3", "-fno-strict-aliasing", "--param=max-inline-insns-single=4000",
                            "--param=large-function-growth=2000", "--param=inline-unit-growth=400"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=DIRECTIVES,
        annotate=os.environ.get("FASTGUARD_ANNOTATE") == "1",
    ),
)
