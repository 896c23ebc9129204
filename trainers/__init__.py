"""How any model is trained and evaluated: datasets, recipes, the loop, checkpoints, retrain and transfer."""
from qkvnas_core.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "load_dataset": "data", "dataset_names": "data", "DatasetSplits": "data", "DatasetInfo": "data",
    "Recipe": "recipe", "get_recipe": "recipe", "RECIPES": "recipe",
    "fit": "engine", "evaluate": "engine", "EpochMetrics": "engine", "TrainingDiverged": "engine",
    "StopTraining": "engine", "load_checkpoint": "checkpoint", "Checkpoint": "checkpoint",
    "seed_everything": "runtime", "select_device": "runtime",
    "RetrainTask": "retrain", "DataRequest": "retrain", "retrain_model": "retrain", "train_arch": "retrain",
    "TransferRequest": "transfer", "transfer_run": "transfer",
})
