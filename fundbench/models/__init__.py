"""Getting a model built: where its weights come from, reading checkpoints safely and
strictly, and calling a registered factory with the user's options."""
