"""medchain: patient-owned health data from wearables on a PBFT permissioned chain."""

import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

# --- native extensions (native/_secp.pyx, native/_aesgcm.pyx, native/_smt.pyx, native/_wire.pyx) ---------------------------------
# Optional: without Cython, a C compiler, libsecp256k1-dev or libssl-dev the package still
# installs, with a warning, and node/crypto/batch.py falls back to coincurve and `cryptography`.
# Threads are plain pthreads started per call (native/_parallel.h), not OpenMP: libgomp's pool
# makes a child process forked after a parallel region hang in its next one.
_CFLAGS = ["-O3", "-pthread"]


def _native_warning(what: str) -> None:
    bar = "=" * 78
    print(f"\n{bar}\nWARNING: medchain native extensions: {what}\n"
          "         installing without them; node/crypto/batch.py will use the slower fallback\n"
          "         (needs Cython>=3, gcc, libsecp256k1-dev, libssl-dev, python3-dev)\n"
          f"{bar}\n", file=sys.stderr, flush=True)


def _native_extensions() -> list:
    common = {"include_dirs": ["native"], "depends": ["native/_parallel.h"],
              "extra_compile_args": _CFLAGS, "extra_link_args": ["-pthread"]}
    exts = [
        Extension("native._secp", ["native/_secp.pyx"], libraries=["secp256k1"], **common),
        Extension("native._aesgcm", ["native/_aesgcm.pyx"], libraries=["crypto"], **common),
        Extension("native._smt", ["native/_smt.pyx"], libraries=["crypto"], **common),
        Extension("native._wire", ["native/_wire.pyx"], **common),
    ]
    try:
        from Cython.Build import cythonize
    except ImportError:
        _native_warning("Cython is not installed")
        return []
    try:
        return cythonize(exts, compiler_directives={"language_level": "3"}, quiet=True)
    except Exception as exc:  # noqa: BLE001 - a Cython compile error must not break the install
        _native_warning(f"cythonize failed: {exc}")
        return []


class OptionalBuildExt(build_ext):
    """build_ext that never fails the install: an extension that cannot be built is skipped."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - e.g. no C compiler at all (DistutilsPlatformError)
            _native_warning(f"build_ext failed: {exc}")
            self.extensions = []

    def build_extensions(self) -> None:
        self._failed: set[str] = set()
        super().build_extensions()
        # forget what failed, so the in-place copy and the install/editable outputs skip it
        self.extensions = [ext for ext in self.extensions if ext.name not in self._failed]

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - missing header or library, compiler error
            self._failed.add(ext.name)
            _native_warning(f"could not build {ext.name}: {exc}")


setup(
    name="medchain",
    version="0.1.0",
    description="Patient-owned wearable health data: AES-GCM off-chain blobs, PBFT ledger, on-chain access policy",
    python_requires=">=3.11,<3.14",
    packages=find_packages(include=["node", "node.*", "devices", "devices.*", "native", "native.*"]),
    install_requires=[
        "coincurve>=20.0,<22",
        "msgpack>=1.0.7,<2",
        "lmdb>=1.4,<4",
        "aiohttp>=3.9,<4",
        "uvloop>=0.19,<1",
        "pynacl>=1.5,<2",
        "prometheus-client>=0.19,<1",
        "python-json-logger>=3.1,<4",  # structured (JSON lines) logs for operators
        "cryptography>=42,<51",
        "libp2p>=0.8.1,<0.9",
        "trio>=0.26,<1",
        # `medchain bench` (devices/load/benchmark.py): HDR latency histograms and the PNG plot; in
        # install_requires, not an extra, so the command works right after `make demo` / `make test`
        "hdrhistogram>=0.10,<0.11",
        "matplotlib>=3.8,<4",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-benchmark>=4,<6",
            "pytest-timeout>=2.2,<3",
            # `make test` runs the suite in TEST_WORKERS processes, a test file per worker at a time
            "pytest-xdist>=3.5,<4",
            "hypothesis>=6.100,<7",
            "ruff>=0.5,<1",
            "mypy>=1.10,<2",  # `make test`: strict over the sans-IO core (mypy.ini)
            # `make test` runs the fuzzers briefly and validates the FHIR export
            "atheris>=2.3,<4",
            "fhir.resources>=6.4,<6.5",
            "pydantic>=1.10,<2",
            # tests/test_protocol_doc.py checks a validator's answers against docs/openapi.json
            "jsonschema>=4.18,<5",
        ],
        # coverage-guided fuzzing (`make fuzz`, tests/fuzz/)
        "fuzz": ["atheris>=2.3,<4", "hypothesis>=6.100,<7"],
        # FHIR R4 validation of devices/patient/fhir.py's export: fhir.resources 6.4 is the last release whose
        # top-level models are R4 (4.0.1); 6.5+ moved to R4B/R5. It needs pydantic v1.
        "fhir": ["fhir.resources>=6.4,<6.5", "pydantic>=1.10,<2"],
        # `make mutation` (scripts/mutation.py): mutmut 3 runs only the tests that reach each mutated
        # function, forked per mutant (measured here: 15 mutants of node/crypto/seal.py in 7 s, where
        # cosmic-ray 8.4 took 22 s for 11, one fresh pytest per mutant over the whole test command)
        "mutation": ["mutmut>=3.3,<4"],
        # optional comparison point for `make bench` (pycryptodome, a new cipher per message); py-spy to profile
        "bench": ["pycryptodome>=3.19,<4", "py-spy>=0.3.14,<1"],
    },
    entry_points={"console_scripts": ["medchain=node.cli:main"]},
    ext_modules=_native_extensions(),
    cmdclass={"build_ext": OptionalBuildExt},
)
