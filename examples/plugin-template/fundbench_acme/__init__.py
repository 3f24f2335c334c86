"""fundbench-acme: a template for a third-party fundbench model plugin.

``fundbench_acme.plugin`` is the entry point (light: no torch at import) and registers
``acme_tiny``; ``fundbench_acme.model`` holds the model, imported only when it is built.
Nothing is imported here, so loading the entry point stays cheap.
"""
