"""Stage processes skip optional imports that no stage uses.

pyarrow's dataset module imports pandas when it loads (to test whether
values are pandas objects), and LightGBM imports scikit-learn and pandas, with
SciPy's statistics behind them, for APIs the stages never call (its sklearn
estimators, DataFrame input). That is 0.4-0.9 s per stage process on a quiet
machine and several seconds on a busy one, paid by every stage. Both
libraries treat the packages as optional and work without them, so a stage
process (and only it: `python -m batchline.stage`) makes them look absent.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

SKIPPED = ("pandas", "sklearn")


class _Skip:
    """A meta path finder that reports the named top-level packages as not installed."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = frozenset(names)

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (batchline stage processes "
                                      "skip it; see batchline.lean_imports)", name=name)
        return None


def skip_optional_imports(names: Sequence[str] = SKIPPED) -> None:
    """Make `names` unimportable in this process, unless one is already imported."""
    wanted = [n for n in names if n not in sys.modules]
    if wanted and not any(isinstance(f, _Skip) for f in sys.meta_path):
        sys.meta_path.insert(0, _Skip(wanted))
