"""How any model is trained and evaluated: datasets, recipes, the engine, checkpoints."""
