"""medchain: patient-owned health data from wearables on a PBFT permissioned chain."""

from setuptools import find_packages, setup

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
        "cryptography>=42,<51",
        "libp2p>=0.8.1,<0.9",
        "trio>=0.26,<1",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-benchmark>=4,<6",
            "pytest-timeout>=2.2,<3",
            "hypothesis>=6.100,<7",
            "ruff>=0.5,<1",
        ],
    },
    entry_points={"console_scripts": ["medchain=node.cli:main"]},
)
