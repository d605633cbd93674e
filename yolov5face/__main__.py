"""`python -m yolov5face`."""

import sys

from yolov5face.tools.cli import main

sys.exit(main())
