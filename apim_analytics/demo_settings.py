"""The demo's settings, apart from the demo itself (which needs gRPC and SQLAlchemy)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.settings import SettingsError, setting


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
    protocol: str = setting("mixer", env="APIM_DEMO_PROTOCOL",
                            help="what the simulated mesh sends: mixer (Istio 1.1-1.7), or als / otel (Istio 1.8+ "
                                 "sidecars; the catalog's APIs are loaded from OpenAPI documents first)")

    def validate(self) -> None:
        if self.rate <= 0 or self.duration <= 0:
            raise SettingsError("--rate and --duration must be positive")
        if self.protocol not in ("mixer", "als", "otel"):
            raise SettingsError(f"--protocol: mixer, als or otel, not {self.protocol!r}")
