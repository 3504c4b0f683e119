"""Hyperparameter search on validation only (``fedrec tune``; ``pip install 'fedrec[tune]'``)."""
