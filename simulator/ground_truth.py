"""What the simulator delivered, aggregated exactly as the analytics store should report it.

The key is the store's natural grain: (UTC minute bucket, API name, API
version, application id, subscription tier, status class), with request
count, request bytes and response bytes. The bucket is
``request_ts_ms - request_ts_ms % 60000`` (bucket start, epoch ms, UTC), the
same alignment as the Siddhi ``AGG_TIMESTAMP`` of APIM's ``_MINUTES`` tables.
Comparing this file with the store's minute table proves the pipeline neither
lost nor double counted an event.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

from simulator.traffic import SimRequest

KEY_COLUMNS: tuple[str, ...] = ("bucket_start_ms", "api_name", "api_version", "application_id", "tier",
                                "status_class")
VALUE_COLUMNS: tuple[str, ...] = ("requests", "request_bytes", "response_bytes")
COLUMNS: tuple[str, ...] = KEY_COLUMNS + VALUE_COLUMNS
MINUTE_MS = 60_000

Key = tuple[int, str, str, str, str, str]


class GroundTruth:
    """Additive counts per (minute, API, version, application, tier, status class).

    Example:
        >>> gt = GroundTruth()
        >>> gt.totals()
        {'requests': 0, 'request_bytes': 0, 'response_bytes': 0}
    """

    __slots__ = ("_cells",)

    def __init__(self) -> None:
        self._cells: dict[Key, list[int]] = {}

    def add(self, r: SimRequest) -> None:
        """Count one request."""
        ts = r.request_ts_ms
        key = (ts - ts % MINUTE_MS, r.api.name, r.api.version, r.application_id, r.tier,
               f"{r.response_code // 100}xx")
        cell = self._cells.get(key)
        if cell is None:
            self._cells[key] = [1, r.request_size, r.response_size]
        else:
            cell[0] += 1
            cell[1] += r.request_size
            cell[2] += r.response_size

    def add_all(self, requests: Iterable[SimRequest]) -> GroundTruth:
        """Count every request; returns ``self``."""
        for r in requests:
            self.add(r)
        return self

    def merge(self, other: GroundTruth) -> GroundTruth:
        """Add ``other``'s counts into this one; returns ``self``."""
        for key, (n, req_b, resp_b) in other._cells.items():
            cell = self._cells.get(key)
            if cell is None:
                self._cells[key] = [n, req_b, resp_b]
            else:
                cell[0] += n
                cell[1] += req_b
                cell[2] += resp_b
        return self

    def rows(self) -> list[tuple[int, str, str, str, str, str, int, int, int]]:
        """Every cell as a flat tuple in :data:`COLUMNS` order, sorted by key."""
        return [(*key, *cell) for key, cell in sorted(self._cells.items())]  # type: ignore[misc]  # key + cell is the row shape; mypy cannot add tuple lengths

    def totals(self) -> dict[str, int]:
        """``{"requests": ..., "request_bytes": ..., "response_bytes": ...}`` over everything."""
        sums = [0, 0, 0]
        for cell in self._cells.values():
            sums[0] += cell[0]
            sums[1] += cell[1]
            sums[2] += cell[2]
        return dict(zip(VALUE_COLUMNS, sums, strict=True))

    def by(self, *columns: str) -> dict[tuple[object, ...], dict[str, int]]:
        """Roll the counts up to any subset of :data:`KEY_COLUMNS`.

        Args:
            columns: key column names; none gives one row keyed by ``()``.

        Returns:
            ``{(values of columns...): {"requests", "request_bytes", "response_bytes"}}``.

        Raises:
            ValueError: an unknown column.
        """
        unknown = [c for c in columns if c not in KEY_COLUMNS]
        if unknown:
            raise ValueError(f"unknown ground-truth key columns {unknown}; known: {list(KEY_COLUMNS)}")
        idx = [KEY_COLUMNS.index(c) for c in columns]
        out: dict[tuple[object, ...], list[int]] = {}
        for key, cell in self._cells.items():
            k = tuple(key[i] for i in idx)
            acc = out.get(k)
            if acc is None:
                out[k] = list(cell)
            else:
                acc[0] += cell[0]
                acc[1] += cell[1]
                acc[2] += cell[2]
        return {k: dict(zip(VALUE_COLUMNS, v, strict=True)) for k, v in sorted(out.items(), key=lambda kv: kv[0])}

    def summary(self, limit: int = 10) -> str:
        """A small text table of the busiest (API, version, tier) groups."""
        groups = sorted(self.by("api_name", "api_version", "tier").items(), key=lambda kv: -kv[1]["requests"])
        lines = [f"{'api':<24} {'version':<8} {'tier':<16} {'requests':>10}"]
        lines += [f"{name:<24} {version:<8} {tier:<16} {v['requests']:>10}"
                  for (name, version, tier), v in groups[:limit]]
        if len(groups) > limit:
            rest = sum(v["requests"] for _, v in groups[limit:])
            lines.append(f"{f'({len(groups) - limit} more groups)':<50} {rest:>10}")
        return "\n".join(lines)

    def write_csv(self, path: str | os.PathLike[str]) -> None:
        """Write the header and the sorted rows (see :data:`COLUMNS`)."""
        with Path(path).open("w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(COLUMNS)
            writer.writerows(self.rows())

    @classmethod
    def read_csv(cls, path: str | os.PathLike[str]) -> GroundTruth:
        """Load a file written by :meth:`write_csv`; rows with the same key are added.

        Raises:
            ValueError: the header is not :data:`COLUMNS`.
        """
        gt = cls()
        with Path(path).open(newline="") as fh:
            reader = csv.reader(fh)
            header = tuple(next(reader, ()))
            if header != COLUMNS:
                raise ValueError(f"{path}: expected header {','.join(COLUMNS)}, got {','.join(header)}")
            for row in reader:
                key: Key = (int(row[0]), row[1], row[2], row[3], row[4], row[5])
                cell = gt._cells.setdefault(key, [0, 0, 0])
                cell[0] += int(row[6])
                cell[1] += int(row[7])
                cell[2] += int(row[8])
        return gt

    def __len__(self) -> int:
        return len(self._cells)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GroundTruth):
            return NotImplemented
        return self._cells == other._cells

    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable; typeshed types __hash__ as a method

    def __repr__(self) -> str:
        t = self.totals()
        return f"GroundTruth(cells={len(self._cells)}, requests={t['requests']})"
