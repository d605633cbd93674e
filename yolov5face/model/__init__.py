"""The yolov5-face network (`network.py`) and safe checkpoint loading (`checkpoint.py`)."""
