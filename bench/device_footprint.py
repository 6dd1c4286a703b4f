"""Installed size of what a device needs, from pip's own records (docs/devices.md quotes it).

python bench/device_footprint.py [--out bench/results/device_footprint.json]
python bench/device_footprint.py --quick   # the same, to device_footprint_quick.json (marked quick)

Each distribution's size is the sum of the files its RECORD lists (what `pip uninstall` would
remove), so bundled native libraries such as numpy's OpenBLAS (`numpy.libs/`) count, and byte
code compiled since installation does not. Runs in about a second; nothing is imported but
`importlib.metadata`.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import RESULTS, command_line, git_provenance, out_file, write_results  # noqa: E402
from mobile_sim.report import machine_info, utc_now  # noqa: E402

# The ONNX device's runtime dependencies (docs/devices.md), then torch for comparison.
DEVICE = [
    "onnxruntime",
    "flatbuffers",
    "protobuf",
    "packaging",
    "numpy",
    "zstandard",
    "httpx",
    "httpcore",
    "h11",
    "anyio",
    "idna",
    "certifi",
    "sniffio",
    "cryptography",
    "cffi",
    "pycparser",
]
COMPARE = ["torch"]


def installed_bytes(name: str) -> tuple[str, int] | None:
    """(version, bytes of the files in its RECORD that exist), or None if not installed."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    total = 0
    for f in dist.files or []:
        path = Path(str(dist.locate_file(f)))
        if path.is_file():
            total += path.stat().st_size
    return dist.version, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the same measurement (it takes a second), written to device_footprint_quick.json "
        "and marked quick, so `make bench-quick` never rewrites the published file",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="results file (default bench/results/device_footprint.json; with --quick "
        "bench/results/device_footprint_quick.json)",
    )
    git_provenance()  # the code this run starts from
    args = parser.parse_args(argv)
    out = out_file(args.out, RESULTS / "device_footprint.json", args.quick)
    packages: dict[str, dict[str, object]] = {}
    missing = []
    for name in DEVICE + COMPARE:
        found = installed_bytes(name)
        if found is None:
            missing.append(name)
            continue
        version, size = found
        packages[name] = {"version": version, "installed_bytes": size}
    device_total = sum(
        int(v["installed_bytes"])  # type: ignore[call-overload]
        for k, v in packages.items()
        if k in DEVICE
    )
    result = {
        "command": command_line(__file__, argv),
        "quick": bool(args.quick),
        "machine": machine_info(),
        "date": utc_now(),
        "packages": packages,
        "not_installed": missing,
        "onnx_device_total_bytes": device_total,
        "torch_bytes": packages.get("torch", {}).get("installed_bytes"),
    }
    write_results(out, result)
    for name, entry in packages.items():
        print(f"{name:14s} {entry['version']:>12s} {int(entry['installed_bytes']) / 1e6:8.1f} MB")  # type: ignore[call-overload]
    print(f"ONNX device total {device_total / 1e6:.1f} MB; not installed: {missing or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
