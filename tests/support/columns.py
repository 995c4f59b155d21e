"""Columnar batches (collector.columns) back as UsageEvent rows, for tests that check what was written."""

from __future__ import annotations

import json

from schemas.apim.usage.v1 import usage_event_columns_pb2 as cols_pb
from schemas.apim.usage.v1 import usage_event_pb2 as pb


def rows(batch: cols_pb.UsageEventColumns) -> list[pb.UsageEvent]:
    """A columnar batch back as UsageEvent rows (the pipeline itself reads columns)."""
    n = batch.count
    columns = {}
    for fd in cols_pb.UsageEventColumns.DESCRIPTOR.fields:
        if fd.name in ("call_index", "count", "header"):
            continue
        if fd.message_type is not None:
            column = getattr(batch, fd.name)
            values = [column.values[c] for c in column.codes]
        else:
            values = list(getattr(batch, fd.name))
        if values:
            if len(values) != n:
                raise ValueError(f"column {fd.name} has {len(values)} entries, batch has {n}")
            columns[fd.name] = values
    out = []
    for i in range(n):
        ev = pb.UsageEvent()
        for name, values in columns.items():
            if name == "properties_json":
                if values[i]:
                    ev.properties.update(json.loads(values[i]))
            else:
                setattr(ev, name, values[i])
        if not ev.event_id and batch.call_index:
            ev.event_id = f"{batch.header.call_id}/{batch.call_index[i]}"
        out.append(ev)
    return out
