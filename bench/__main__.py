"""``python -m bench`` (``make bench``): run every benchmark."""

import sys

from apim_analytics import logs
from bench import collector_ceiling, kafka_records, memory, pipeline, spine

logs.configure("WARNING")
status = spine.main(sys.argv[1:])
print()
status |= kafka_records.main([])
print()
status |= collector_ceiling.main([])
print()
status |= pipeline.main(["--store", "sqlite"])
print()
status |= pipeline.main(["--store", "postgresql", "--kafka-clients", "kafka-python"])
print()
status |= memory.main([])
sys.exit(status)
