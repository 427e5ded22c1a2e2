"""Fixtures shared by the test modules (pytest loads this file; no test module imports it).

Helper functions and data shared by several test modules live in tests/helpers/.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def run_main(capsys):
    """main.main(argv) -> (exit status, stderr); a SystemExit (flag errors) counts as a status."""
    import main

    def run(argv: list[str]) -> tuple[int, str]:
        try:
            code = main.main(argv)
        except SystemExit as exc:
            code = exc.code
        return code, capsys.readouterr().err

    return run


@pytest.fixture
def main_exit(capsys):
    """main.main(argv) must exit through SystemExit (bad flags, config, paths): (code, stderr)."""
    import main

    def run(argv: list[str]) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exc:
            main.main(argv)
        return exc.value.code, capsys.readouterr().err

    return run
