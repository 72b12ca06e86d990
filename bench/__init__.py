"""sparkvision's benchmarks: ``python -m bench featurize`` (see ``bench/__main__.py``)."""
