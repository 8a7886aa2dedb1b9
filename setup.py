"""interceptd: package metadata and the cffi build of csrc/ into interceptd._core."""

from setuptools import find_packages, setup

setup(
    name="interceptd",
    version="0.1.0",
    description="Hardened OCI containers: seccomp-notify vetting, user namespaces, emulated /proc",
    packages=find_packages(include=["interceptd", "interceptd.*"]),
    python_requires=">=3.11",
    setup_requires=["cffi>=1.15"],
    install_requires=["cffi>=1.15"],
    cffi_modules=["interceptd/_build_core.py:ffibuilder"],
    entry_points={
        "console_scripts": [
            "interceptd=interceptd.daemon:main",
            "interceptd-runc=interceptd.runtime.main:main",
            "interceptctl=interceptd.cli:main",
        ],
    },
    zip_safe=False,
)
