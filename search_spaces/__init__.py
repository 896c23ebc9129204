"""What can be searched, and how a point of a search space becomes a model."""
