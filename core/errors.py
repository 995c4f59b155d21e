"""The project's one error root.

Every error the project raises on purpose derives from :class:`ApimError`,
through one root per package (``store.errors.StoreError``,
``collector.errors.CollectorError``, ...). Two class-level facts travel with
each error, so callers branch on them instead of listing types or reading
message text:

- ``retriable``: the same call may succeed later unchanged (a broker or
  database that is away). The pipeline's follow loop retries these and only
  these; anything else is a defect or bad input and stops the process.
- ``usage``: the caller's input is wrong (a flag, a file, a URL). The CLI
  exits 2 for these and 1 for the others.

Third-party errors (kafka-python, confluent-kafka, grpc, SQLAlchemy) are
translated where they enter our code, with the original chained as
``__cause__``; the message is one line that names the problem and, in
``hint``, what to do about it.
"""

from __future__ import annotations

from typing import ClassVar


class ApimError(Exception):
    """Root of the project's errors; ``str()`` is one line naming the problem.

    Args:
        message: what went wrong, naming the thing (file, URL, flag) involved.
        hint: what to do about it; the CLI prints it after the message.
    """

    retriable: ClassVar[bool] = False
    usage: ClassVar[bool] = False

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def one_line(self) -> str:
        """The message and the hint, as the CLI prints them."""
        text = " ".join(str(self).split())
        return f"{text}; {self.hint}" if self.hint else text


class RetriableError(ApimError):
    """A dependency is away or busy; the same call may succeed later."""

    retriable = True


class InputError(ApimError):
    """The caller's input cannot be used (a flag, a file, a URL)."""

    usage = True
