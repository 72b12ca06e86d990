"""MLflow tracking: whether it is on (``server``), run logging (``runs``), the models' flavours (``pyfunc``)
and the registry (``registry``). Importing this package never imports MLflow."""
