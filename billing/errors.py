"""The billing package's errors."""

from __future__ import annotations

from core.errors import ApimError, InputError, RetriableError


class BillingError(ApimError):
    """Root of the billing package's errors."""


class BillingArgumentError(BillingError, InputError, ValueError):
    """Invalid billing arguments (period, billable rule, sink); the message says which and why."""


class DeliveryError(BillingError):
    """A sink refused a record for good (e.g. HTTP 400): retrying the same record cannot help."""


class DeliveryRetriable(DeliveryError, RetriableError):
    """A sink could not take a record now (timeout, HTTP 429 or 5xx, a full disk); try again later."""


class PublishError(BillingError):
    """A publish run stopped before delivering everything; the message names the record and why.

    The watermark stays before the record's window, so rerunning continues from it.
    """
