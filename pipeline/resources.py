"""The cardinality guard for the ``resource_template`` dimension.

Gateways that know the API definition send a template (``/orders/{id}``);
mesh traffic without one sends only the raw path (``/orders/8812?x=1``), and
every id would become its own row in every fact table. So raw paths are
normalised (query dropped, ids, UUIDs, hashes and long tokens collapsed to
``{id}``), and each API admits at most ``max_resources`` distinct resources:
the rest are folded into ``other`` and counted in ``resource_folds``.

Admission is decided once per run, at commit, in sorted order, from the
store's admitted set as of the run's start plus the run's candidates. So a
crashed run that is replayed folds exactly the same resources.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping

OTHER = "other"

_ID_SEGMENT = re.compile(
    r"""^(
        \d+                                   # numbers
      | [0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}   # uuids
      | [0-9a-fA-F]{16,}                      # hashes, hex ids
      | (?=[^/]*\d)[A-Za-z0-9_\-.~%=+]{20,}   # long tokens with a digit (base64 ids, slugs with ids)
      | [^/]*@[^/]*                           # e-mail addresses
    )$""",
    re.VERBOSE,
)


@functools.lru_cache(maxsize=1 << 16)
def normalise_path(path: str) -> str:
    """A raw request path as a template: no query or fragment, id-like segments as ``{id}``."""
    path = path.split("?", 1)[0].split("#", 1)[0]
    if not path:
        return ""
    segments = path.split("/")
    return "/".join("{id}" if seg and _ID_SEGMENT.match(seg) else seg for seg in segments)


def resource_of(template: str, path: str) -> str:
    """The resource dimension of an event: its template, else its normalised path."""
    return template if template else normalise_path(path)


def admit(admitted: Mapping[tuple[str, str], frozenset[str]], candidates: Iterable[tuple[str, str, str]],
          max_resources: int) -> dict[tuple[str, str], set[str]]:
    """The resources newly admitted this run, per (api, version), within the cap.

    Args:
        admitted: per (api, version), the resources already admitted (from the store).
        candidates: (api, version, resource) seen in this run.
        max_resources: cap per API version; 0 disables the guard.

    Returns:
        Per (api, version), the new resources to admit (sorted admission, so deterministic).
    """
    new: dict[tuple[str, str], set[str]] = {}
    for api, version, resource in sorted(set(candidates)):
        if resource == OTHER:
            continue
        have = admitted.get((api, version), frozenset())
        if resource in have:
            continue
        added = new.setdefault((api, version), set())
        if max_resources and len(have) + len(added) >= max_resources:
            continue
        added.add(resource)
    return {k: v for k, v in new.items() if v}
