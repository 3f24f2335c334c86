"""KeepFIT V2 (MM-Retinal V2, arXiv 2501.15798) for fundbench: model and full training."""
