"""`python -m batchline.stages`: the catalog as text, for scripts that build images.

    python -m batchline.stages images   # one line per stage: name, extras, system packages
"""

from __future__ import annotations

import sys

from batchline.stages import EXTRA_SYSTEM_PACKAGES, STAGES


def main(argv: list[str]) -> int:
    if argv != ["images"]:
        sys.stderr.write("usage: python -m batchline.stages images\n")
        return 2
    for stage in STAGES.values():
        packages = sorted({p for e in stage.extras for p in EXTRA_SYSTEM_PACKAGES.get(e, ())})
        extras = ",".join(stage.extras)
        sys.stdout.write(f"{stage.name} {extras or '-'} {' '.join(packages) or '-'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
