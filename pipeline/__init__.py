"""The aggregation pipeline: an Apache Beam job that reads usage events from
Kafka in bounded offset ranges, aggregates them into time buckets, and lands
the results together with the consumed offsets in one store transaction.
"""
