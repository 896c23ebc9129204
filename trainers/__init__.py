"""How any model is trained and evaluated: datasets, recipes, the loop, checkpoints, retrain and transfer."""
from qkvnas_core.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "load_dataset": "datasets", "dataset_names": "datasets", "DatasetSplits": "datasets", "DatasetInfo": "datasets",
    "Recipe": "recipe", "get_recipe": "recipe", "RECIPES": "recipe",
    "fit": "engine", "evaluate": "engine", "EpochMetrics": "metrics", "TrainingDiverged": "engine",
    "StopTraining": "engine", "load_checkpoint": "checkpoint", "Checkpoint": "checkpoint",
    "trained_checkpoint": "checkpoint",
    "seed_everything": "runtime", "select_device": "runtime",
    "RetrainTask": "from_scratch", "DataRequest": "datasets", "retrain_model": "from_scratch",
    "train_arch": "from_scratch", "TransferTask": "transfer", "finetune": "transfer",
})
