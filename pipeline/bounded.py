"""A bounded run's Beam graph: read the planned ranges, decode and pre-aggregate, merge the
partials, write the dead letters, then commit the run in one store transaction.

The driver (pipeline.job) imports this module only when it has planned a run, so a ``--once``
that finds nothing to read never imports Beam or pandas. The graph uses only standard transforms
and PipelineOptions, so the same run goes to Flink or Dataflow with ``--runner``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from sqlalchemy import Engine

from pipeline.aggregate import Partial, empty_partial, finish, merge
from pipeline.commit import RunCounts, commit_run
from pipeline.dead_letters import WriteDeadLetters
from pipeline.elements import ChunkSummary, DeadLettersWritten
from pipeline.group_offsets import mirror_store_offsets
from pipeline.kafka_source import ReadRanges
from pipeline.offsets import OffsetRange
from pipeline.settings import PipelineSettings
from pipeline.transforms import DEAD_LETTERS, DecodeAndPreAggregate
from store.engine import make_engine

# FnApiRunner in-process: the DirectRunner would first try Prism, which
# downloads a binary at run time (docs/kafka-and-beam.md section 2). Users override with --runner.
# Beam 2.62 knows the in-process runner only by its full name
DEFAULT_BEAM_ARGS = ["--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner"]


@dataclass
class RunTotals:
    """A bounded run's summaries added up: the single element its commit writes."""

    partial: Partial | None = None
    new_calls: list[tuple[str, int, str, int]] = field(default_factory=list)
    records: int = 0
    duplicates: int = 0
    dead_letters: int = 0


class MergeSummaries(beam.CombineFn):
    """ChunkSummaries -> one RunTotals for the run. Partials wait in a list and are merged eight at a
    time, so memory holds a few partials (small frames), and no partial is regrouped over and over."""

    COMPACT_AT = 8

    def create_accumulator(self) -> tuple[list[Partial], RunTotals]:
        return [], RunTotals()

    def add_input(self, acc: tuple[list[Partial], RunTotals], item: ChunkSummary | RunTotals
                  ) -> tuple[list[Partial], RunTotals]:
        partials, totals = acc
        if item.partial is not None and item.partial.events:
            partials.append(item.partial)
            if len(partials) >= self.COMPACT_AT:
                partials[:] = [merge(partials)]
        totals.new_calls.extend(item.new_calls)
        totals.records += item.records
        totals.duplicates += item.duplicates
        totals.dead_letters += item.dead_letters
        return acc

    def merge_accumulators(self, accs: Iterable[tuple[list[Partial], RunTotals]]
                           ) -> tuple[list[Partial], RunTotals]:
        out: tuple[list[Partial], RunTotals] = ([], RunTotals())
        for partials, totals in accs:
            for p in partials:
                self.add_input(out, RunTotals(partial=p))
            self.add_input(out, totals)
        return out

    def extract_output(self, acc: tuple[list[Partial], RunTotals]) -> RunTotals:
        partials, totals = acc
        totals.partial = merge(partials) if partials else empty_partial()
        return totals


class CommitRun(beam.DoFn):
    """The run's RunTotals -> finish -> one store transaction, once the dead letters are written
    (the ``dead_letters_written`` side input: Beam runs this step only after that step is done)."""

    def __init__(self, settings: PipelineSettings, plan: list[OffsetRange],
                 admitted: dict[tuple[str, str], frozenset[str]]) -> None:
        self.settings = settings
        self.plan = plan
        self.admitted = admitted
        self._engine: Engine | None = None

    def setup(self) -> None:
        self._engine = make_engine(self.settings.store)

    def teardown(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def process(self, result: RunTotals, dead_letters_written: list[DeadLettersWritten]) -> Iterable[dict]:
        assert self._engine is not None  # setup() ran
        written_count = sum(w.count for w in dead_letters_written)
        assert written_count == result.dead_letters, "every dead record is copied before the commit"
        facts = finish(result.partial or empty_partial(), self.admitted, self.settings.max_resources_per_api)
        written = commit_run(self._engine, self.plan, facts, result.new_calls,
                             RunCounts(records=result.records, duplicates=result.duplicates,
                                       dead_letters=result.dead_letters),
                             dedup_horizon_s=self.settings.dedup_horizon_s,
                             near_limit_ratio=self.settings.near_limit_ratio)
        # committed: now the advisory copy of the store's offsets for Kafka lag tools (never raises)
        mirror_store_offsets(self._engine, self.settings.kafka, self.settings.consumer_group, self.settings.topic)
        yield {"fact_rows": written, "folded_requests": facts.folded_requests}


def build_pipeline(p: beam.Pipeline, settings: PipelineSettings, plan: list[OffsetRange],
                   admitted: dict[tuple[str, str], frozenset[str]]) -> beam.PCollection:
    """The run's graph; every step is labelled (labels are what runners match on update)."""
    batches = (
        p
        | "PlanRanges" >> beam.Create(plan)
        | "SpreadRanges" >> beam.Reshuffle()
        | "ReadRanges" >> beam.ParDo(ReadRanges(settings.kafka, settings.store, settings.dedup_horizon_s,
                                                kafka_client=settings.kafka_client))
    )
    decoded = batches | "DecodeAndPreAggregate" >> DecodeAndPreAggregate(settings.chunk_events)
    written = decoded[DEAD_LETTERS] | "WriteDeadLetters" >> beam.ParDo(
        WriteDeadLetters(settings.kafka, settings.dead_letter_topic))
    return (
        decoded["summaries"]
        # without_defaults: every range emits a summary, so the input is never empty, and the default
        # value's side input would make the runner deep-size the whole merged result for its state cache
        | "MergeSummaries" >> beam.CombineGlobally(MergeSummaries()).without_defaults()
        | "CommitRun" >> beam.ParDo(CommitRun(settings, plan, admitted),
                                    dead_letters_written=beam.pvalue.AsList(written))
    )


@functools.lru_cache(maxsize=8)
def _options(beam_args: tuple[str, ...]) -> PipelineOptions:
    """Parsed once per process: building PipelineOptions costs Beam hundreds of argparse parsers."""
    return PipelineOptions([*DEFAULT_BEAM_ARGS, *beam_args])


def execute(settings: PipelineSettings, plan: list[OffsetRange], admitted: dict[tuple[str, str], frozenset[str]],
            beam_args: list[str] | None = None) -> None:
    """Run the graph for ``plan`` to its end: committed when it returns."""
    with beam.Pipeline(options=_options(tuple(beam_args or ()))) as p:
        build_pipeline(p, settings, plan, admitted)
