"""``apim-analytics demo``: its settings and flags (the demo itself is apim_analytics/demo.py,
imported only when it runs: it needs gRPC and SQLAlchemy)."""

from __future__ import annotations

import argparse

from apim_analytics.common import add_config_flag
from apim_analytics.demo_settings import DemoSettings
from core.settings import add_flags, resolve

__all__ = ["DemoSettings", "add_parser", "run"]


def run(args: argparse.Namespace) -> int:
    """Resolve the settings, then load and run the demo."""
    settings = resolve(DemoSettings, args=args, section="demo")
    from apim_analytics.demo import run_demo

    return run_demo(settings)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``demo`` on the top-level subparsers."""
    demo = sub.add_parser("demo", help="run everything end to end into SQLite and print a usage summary")
    add_config_flag(demo)
    add_flags(demo, DemoSettings)
    demo.set_defaults(func=run)
