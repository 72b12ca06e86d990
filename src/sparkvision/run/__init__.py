"""A run's files and environment: storage (local or object store), the layout of every file, provenance,
locks, the input listing, image decoding, the split, the Spark session and version checks."""
