"""fundbench plugin package."""
