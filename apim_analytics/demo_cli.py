"""``apim-analytics demo``: its settings and flags (the demo itself is apim_analytics/demo.py,
imported only when it runs: it needs gRPC and SQLAlchemy)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from apim_analytics.common import add_config_flag
from core.settings import SettingsError, add_flags, resolve, setting


@dataclass(frozen=True)
class DemoSettings:
    """What the demo simulates and where it writes (config-file section ``demo:``)."""

    kafka: str = setting("127.0.0.1:9092", env="APIM_KAFKA_BOOTSTRAP", help="Kafka bootstrap servers")
    out: Path = setting(Path("demo-output"), env="APIM_DEMO_OUT",
                        help="folder for the SQLite store, ground truth and logs (emptied first)")
    rate: float = setting(200.0, env="APIM_DEMO_RATE", help="simulated requests per second")
    duration: float = setting(600.0, env="APIM_DEMO_DURATION",
                              help="simulated seconds of traffic, replayed as fast as possible")
    seed: int = setting(7, env="APIM_DEMO_SEED", help="simulation seed")

    def validate(self) -> None:
        if self.rate <= 0 or self.duration <= 0:
            raise SettingsError("--rate and --duration must be positive")


def run(args: argparse.Namespace) -> int:
    """Resolve the settings, then load and run the demo."""
    settings = resolve(DemoSettings, args=args, section="demo")
    from apim_analytics.demo import run_demo

    return run_demo(settings)


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``demo`` on the top-level subparsers."""
    demo = sub.add_parser("demo", help="run everything end to end into SQLite and print a usage summary")
    add_config_flag(demo)
    add_flags(demo, DemoSettings)
    demo.set_defaults(func=run)
