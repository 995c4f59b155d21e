"""istio-apim-analytics: shared command-line entry point, settings, logging and metrics.

The data flow has one package per stage: ``schemas`` (the contracts) ->
``simulator`` (Mixer traffic) -> ``collector`` (Mixer adapter -> Kafka) ->
``pipeline`` (Beam: Kafka -> aggregates) -> ``store`` (analytics and
throttle-quota tables).
"""

__version__ = "0.1.0"
