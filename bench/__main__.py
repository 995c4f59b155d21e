"""``python -m bench`` (``make bench``): run every benchmark."""

import sys

from apim_analytics import logs
from bench import collector_ceiling, kafka_records, spine

logs.configure("WARNING")
status = spine.main(sys.argv[1:])
print()
status |= kafka_records.main([])
print()
status |= collector_ceiling.main([])
sys.exit(status)
