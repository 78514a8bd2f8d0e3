"""Profiles a batchline stage process when BATCHLINE_BENCH_PROFILE names a folder.

bench/profile_stages.py puts this folder first on PYTHONPATH; Python imports
`sitecustomize` at start-up, before the stage's own imports, so the profile
covers interpreter start-up work, imports and the stage's run to exit.
"""

from __future__ import annotations

import os
import sys

_OUT = os.environ.get("BATCHLINE_BENCH_PROFILE")
_ARGV = getattr(sys, "orig_argv", sys.argv)
if _OUT and "batchline.stage" in _ARGV:
    import atexit
    import cProfile

    _stage = _ARGV[_ARGV.index("batchline.stage") + 1]
    _profile = cProfile.Profile()

    def _dump() -> None:
        _profile.disable()
        os.makedirs(_OUT, exist_ok=True)
        _profile.dump_stats(os.path.join(_OUT, f"{_stage}.prof"))

    atexit.register(_dump)
    _profile.enable()
