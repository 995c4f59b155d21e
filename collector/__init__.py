"""The collector: an Istio Mixer out-of-process adapter for the ``metric``
template. It maps each metric instance to an ``apim.usage.v1.UsageEvent`` and
answers Mixer only once the events are safely on Kafka.
"""
