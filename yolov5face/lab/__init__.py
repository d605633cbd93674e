"""Benchmarks and studies (`yolov5face bench ...`, the `bench` extra). No product module imports
this package: it plugs its command into the CLI through an entry point."""
