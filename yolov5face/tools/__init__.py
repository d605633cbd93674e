"""User tools: the `yolov5face` CLI, HTTP/gRPC clients, the QPS/latency tester, drawing, and the
WIDER FACE evaluation."""
