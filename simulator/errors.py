"""The simulator's errors (see core.errors). Bad settings are ``core.settings.SettingsError``."""

from __future__ import annotations

from core.errors import ApimError, RetriableError


class SimulatorError(ApimError):
    """An error the simulator raises on purpose."""


class CollectorUnavailable(SimulatorError, RetriableError):
    """The collector took no call: every attempt ended UNAVAILABLE or DEADLINE_EXCEEDED (it is
    unreachable, or up but unable to make events safe); the same run may succeed later.

    Attributes:
        target: the collector's address.
        code: the gRPC status code name of the last failed attempt.
        report: the ``simulator.sender.SendReport`` of the run, when it got that far.
    """

    def __init__(self, message: str, *, target: str = "", code: str = "", hint: str = "",
                 report: object = None) -> None:
        super().__init__(message, hint=hint)
        self.target = target
        self.code = code
        self.report = report
