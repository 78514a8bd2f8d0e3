"""The `batchline` command (and `python -m batchline`).

The launcher, like a stage, never needs pandas or scikit-learn, which pyarrow
would import anyway (about 0.3 s of every command): they are skipped before
anything else is imported, then the CLI runs. It ends without the
interpreter's teardown (batchline.process_exit).
"""

from __future__ import annotations

from batchline.lean_imports import skip_optional_imports


def main() -> None:
    skip_optional_imports()
    from batchline.cli import main as cli_main
    from batchline.process_exit import exit_without_teardown

    try:
        cli_main()
    except SystemExit as exc:
        if not isinstance(exc.code, int | None):
            raise  # a message to print: the usual way
        exit_without_teardown(exc.code or 0)
    exit_without_teardown(0)


if __name__ == "__main__":
    main()
