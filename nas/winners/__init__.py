"""What follows a search: retraining the winners with a full recipe (per model and seed), and exporting a
trained model for timm, the Hub layout and ONNX.
"""
