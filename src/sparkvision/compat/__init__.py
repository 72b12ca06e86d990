"""Old APIs on sparkvision's engine: ``sparkvision.compat.sparkdl`` (sparkdl 1.x), ``sparkvision.compat.imageIO``
(``sparkdl.image.imageIO``) and ``sparkvision.compat.image`` (Spark 2.4's ``pyspark.ml.image.ImageSchema``)."""
