"""The pipeline's stages, one module each (load, featurize, train, evaluate, predict, stream); ``pipeline``
composes them."""
