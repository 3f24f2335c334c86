"""Built-in plugins. They register through the ``fundbench`` entry-point group exactly as a
third-party package would (see ``[project.entry-points.fundbench]`` in pyproject.toml)."""
