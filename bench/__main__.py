"""``python -m bench`` (``make bench``): run every benchmark."""

import sys

from apim_analytics import logs
from bench import spine

logs.configure("WARNING")
sys.exit(spine.main(sys.argv[1:]))
