"""Per-task preprocessing: one module per pipeline task, each with a model holder that loads itself."""
