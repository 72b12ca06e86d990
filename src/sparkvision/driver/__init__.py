"""The file spark-submit runs as the driver (``sparkvision_driver.py``): spark-submit needs a path."""
