"""The machine-learning core, with no run files: the featurizer (a Spark ML transformer), the network and its
inference engines, the logistic model and its in-process solver, metrics, and the pretrained models' registry."""
