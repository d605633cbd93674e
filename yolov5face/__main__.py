"""`python -m yolov5face`."""

import sys

from yolov5face.cli import main

sys.exit(main())
