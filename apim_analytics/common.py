"""What the subcommands share: the store flag, the config flag, output files.

Light on purpose: the parser is built from these for every invocation, ``--help``
included, so nothing here imports SQLAlchemy, pandas, Beam or gRPC.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from core.errors import InputError
from core.settings import add_flags, resolve
from store.settings import StoreSettings


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``: the YAML file with one section per component."""
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML config file, one section per component [env: APIM_CONFIG]")


def add_store_flags(parser: argparse.ArgumentParser) -> None:
    """``--store`` (through :class:`store.settings.StoreSettings`) and ``--config``."""
    add_config_flag(parser)
    add_flags(parser, StoreSettings)


def store_url(args: argparse.Namespace) -> str:
    """The store URL: ``--store`` > ``APIM_STORE_URL`` > ``store.url`` in the config file > default."""
    return resolve(StoreSettings, args=args, section="store").store


@contextmanager
def writing_out(out: str) -> Iterator[None]:
    """Writing ``--out``: a file that cannot be written is the caller's input error, named in one line."""
    try:
        yield
    except OSError as exc:
        raise InputError(f"--out {out}: {exc.strerror or exc}", hint="choose a writable file") from exc


def write_output(text: str, out: str | None) -> None:
    """Write to ``out``, or to stdout when it is None."""
    if not out:
        sys.stdout.write(text)
        return
    with writing_out(out), open(out, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
