"""The contract between the harness and its plugins: hook specifications, the model
class, declared preprocessing and image decoding, typed definitions, errors. Imports nothing
else of fundbench; every other layer may import it."""
