"""`yolov5face qps`: QPS and latency of the detection endpoint per concurrency level.

`load` runs the bounded send -> await loops of a level, `transports` sends over raw HTTP/1.1,
aiohttp, gRPC or in-process, `verify` checks answers against the local model, and `cli` has the
options, the table, the plot and `main`.
"""

from yolov5face.tools.qps.cli import add_parser, main

__all__ = ["add_parser", "main"]
