"""What main.py's error output must look like."""


def assert_one_line(err: str, code: int, expected_code: int) -> None:
    """`err` is one `main.py: error: ` line without a traceback, and `code` the expected status."""
    assert code == expected_code, err
    assert err.startswith("main.py: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
