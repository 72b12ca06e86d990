"""spark-submit entry point: ``spark-submit ... sparkvision_driver.py run --images DIR ...``.

Runs the ``sparkvision`` CLI in the driver; the session takes its master and settings from spark-submit.
"""

import sys

from sparkvision.cli import main

if __name__ == "__main__":
    sys.exit(main())
