"""Where a search runs: the local or cluster Ray it starts and stops, the wrappers of Ray's and Optuna's
private APIs, and the trackers (TensorBoard, MLflow, W&B) the trials log to.
"""
