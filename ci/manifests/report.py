"""The ok/FAIL lines and the closing count of one run."""

from __future__ import annotations

from collections.abc import Callable


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def ok(self, what: str, note: str = "") -> None:
        self.passed += 1
        print(f"ok   {what}{': ' + note if note else ''}")

    def fail(self, what: str, why: str) -> None:
        self.failed += 1
        print(f"FAIL {what}: {why}")

    def check(self, what: str, fn: Callable[[], None]) -> None:
        """Run fn; an AssertionError (or any error) is a failure with its message."""
        try:
            fn()
        except AssertionError as e:
            self.fail(what, str(e) or "assertion failed")
        except Exception as e:
            self.fail(what, f"{type(e).__name__}: {e}")
        else:
            self.ok(what)
