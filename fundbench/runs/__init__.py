"""Running a benchmark: run configuration and its validation, the engine that plans and
executes cells and resumes, and the result records with their schema."""
