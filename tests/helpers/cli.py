"""Run the admin CLI in-process, as a shell would: its exit code (0 when it returns), stdout, stderr."""

from __future__ import annotations

import pytest

from mailflow.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code: object = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return (code if isinstance(code, int) else 1), out, err
