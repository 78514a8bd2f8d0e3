"""Kubernetes resource quantities, parsed once for the spec, containers and pods.

The spec accepts what Kubernetes accepts for CPU ("2", "0.5", "500m") and for
memory ("2Gi", "512Mi", "1G", "1048576"), and refuses what a backend could
not honour (memory in millibytes such as "512m", CPU in bytes such as "2Gi"),
so a bad value fails `batchline validate`, not a submit.
"""

from __future__ import annotations

import re

_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
_CPU = re.compile(rf"{_NUMBER}(m?)")
_MEMORY = re.compile(rf"{_NUMBER}(k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?")
_FACTORS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
            "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
MIN_MEMORY = 4 * 2**20  # container engines refuse less than a few MiB


def cpu_cores(quantity: str) -> float:
    """A CPU quantity as cores: "500m" -> 0.5, "2" -> 2.0; ValueError if not one."""
    match = _CPU.fullmatch(str(quantity))
    if not match:
        raise ValueError(f"{quantity!r} is not a CPU quantity; use cores (\"2\", \"0.5\") "
                         "or millicores (\"500m\")")
    cores = float(match.group(1)) / (1000 if match.group(2) else 1)
    if cores <= 0:
        raise ValueError(f"CPU quantity {quantity!r} must be above zero")
    return cores


def memory_bytes(quantity: str) -> int:
    """A memory quantity as bytes: "2Gi" -> 2147483648; ValueError if not one."""
    match = _MEMORY.fullmatch(str(quantity))
    if not match:
        raise ValueError(f"{quantity!r} is not a memory quantity; use e.g. \"512Mi\", "
                         "\"2Gi\" or \"1G\" (a lowercase m means millibytes)")
    value = int(float(match.group(1)) * _FACTORS[match.group(2)])
    if value < MIN_MEMORY:
        raise ValueError(f"memory quantity {quantity!r} is below the 4Mi a container needs")
    return value
