"""Tools for a built model that are not a search space: export (the Hub layout, ONNX), latency on a real
device, the memory check before a model is built, the device vocabulary, and torch's private exporter
constants.
"""
