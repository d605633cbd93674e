"""`python -m yolov5face.tools.qps`: the load tester without the `yolov5face` CLI."""

from __future__ import annotations

import argparse
import logging
import sys

from yolov5face.tools.qps import cli

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m yolov5face.tools.qps",
        description=cli.__doc__,
        epilog=cli.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cli.configure_parser(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sys.exit(cli.main(parser.parse_args()))
