"""How any model is trained and evaluated: datasets, recipes, the loop, checkpoints, retrain and transfer."""
from qkvnas_core.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "load_dataset": "data", "dataset_names": "data", "DatasetSplits": "data", "DatasetInfo": "data",
    "Recipe": "recipe", "get_recipe": "recipe", "RECIPES": "recipe",
    "fit": "engine", "evaluate": "engine", "EpochMetrics": "metrics", "TrainingDiverged": "engine",
    "StopTraining": "engine", "load_checkpoint": "checkpoint", "Checkpoint": "checkpoint",
    "trained_checkpoint": "checkpoint",
    "seed_everything": "runtime", "select_device": "runtime",
    "RetrainTask": "from_scratch", "DataRequest": "data", "retrain_model": "from_scratch",
    "train_arch": "from_scratch",
    "TransferRequest": "transfer", "transfer_run": "transfer",
})
