"""The `batchline` command (and `python -m batchline`).

The launcher, like a stage, never needs pandas or scikit-learn, which pyarrow
would import anyway (about 0.3 s of every command): they are skipped before
anything else is imported, then the CLI runs.
"""

from __future__ import annotations

from batchline.lean_imports import skip_optional_imports


def main() -> None:
    skip_optional_imports()
    from batchline.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
