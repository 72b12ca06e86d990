"""Old APIs on sparkvision's engine (``sparkvision.compat.sparkdl``)."""
