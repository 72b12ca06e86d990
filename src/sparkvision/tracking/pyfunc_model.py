"""The MLflow pyfunc image model, as MLflow's "models from code" file (no pickled Python object).

``mlflow.pyfunc.log_model(python_model=<this file>, artifacts={"classifier": ..., "weights": ...})``
copies this file into the model; loading it runs it, and :func:`mlflow.models.set_model` names the
model. The artifacts: ``classifier.json`` (:func:`sparkvision.ml.image_model.describe`) and the network's
weights file, whose sha256 is checked on load. Input: a column ``image`` of encoded image bytes (in JSON
requests: base64, as MLflow encodes binary columns) or base64 text; output per image: ``label``,
``class_index``, ``confidence``, ``probabilities`` (in the order of the model's classes) and ``error``
(why an input could not be used, else null).
"""

import mlflow
from mlflow.pyfunc import PythonModel

from sparkvision.ml.image_model import ImageClassifier, image_column


class SparkvisionImageModel(PythonModel):
    def load_context(self, context):
        self.model = ImageClassifier.from_files(context.artifacts["classifier"], context.artifacts["weights"])

    def predict(self, context, model_input, params=None):
        return self.model.predict(image_column(model_input))


mlflow.models.set_model(SparkvisionImageModel())
