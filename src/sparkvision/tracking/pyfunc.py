"""The trained model packaged for MLflow, in two flavours: the Spark ``PipelineModel`` (``mlflow.spark``)
and the pyfunc image model (raw image bytes -> label + probabilities, no Spark; its code is
:mod:`sparkvision.tracking.pyfunc_model`, MLflow's "models from code" file), both with signatures, pinned
requirements and the sparkvision package as their code; and back: the Spark pipeline a pyfunc model's
``classifier.json`` describes."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pyspark.sql import functions as F

from sparkvision.columns import CONTENT, PREDICTION
from sparkvision.ml import image_model
from sparkvision.ml.featurizer import DeepImageFeaturizer
from sparkvision.ml.logistic import LogisticModel
from sparkvision.run import storage
from sparkvision.run.layout import RunLayout
from sparkvision.run.spark import is_remote
from sparkvision.settings import Settings
from sparkvision.stages.predict import load_model
from sparkvision.stages.train import assemble

log = logging.getLogger(__name__)

SPARK_MODEL = "spark-model"      # the Spark PipelineModel (mlflow.spark flavour)
PYFUNC_MODEL = "image-model"     # raw image bytes -> label + probabilities, no Spark (pyfunc flavour)


def pinned_requirements(spark_flavour: bool) -> list[str]:
    """The packages the model runs with, at the versions this process runs (what was tested)."""
    wanted = ["mlflow", "numpy", "pandas", "pillow", "keras", "h5py"]
    wanted += ["tensorflow-cpu" if _installed("tensorflow-cpu") else "tensorflow"]
    if spark_flavour:
        wanted += ["pyspark", "pyarrow", "pyyaml", "scipy", "threadpoolctl"]
    out = []
    for dist in wanted:
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            if dist == "mlflow":  # mlflow-skinny alone
                out.append(f"mlflow-skinny=={version('mlflow-skinny')}")
    return out


def _installed(dist: str) -> bool:
    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def _package_dir() -> str:
    """The sparkvision package's folder (shipped whole as the models' code path)."""
    return str(Path(__file__).resolve().parents[1])


def _example_image(spark, lay: RunLayout) -> bytes:
    """The smallest accepted image of the run: the models' input example."""
    row = (spark.read.parquet(lay.images).select(CONTENT).orderBy(F.length(CONTENT), CONTENT).limit(1).first())
    return bytes(row[CONTENT])


def _signatures():
    """The pyfunc model's signature (image bytes -> label, class index, confidence, probabilities, error)
    and the Spark model's (content -> prediction)."""
    from mlflow.models import ModelSignature  # optional
    from mlflow.types import ColSpec, DataType, Schema  # optional
    from mlflow.types.schema import Array  # optional

    pyfunc = ModelSignature(
        Schema([ColSpec(DataType.binary, image_model.INPUT)]),
        Schema([ColSpec(DataType.string, image_model.LABEL), ColSpec(DataType.long, image_model.CLASS_INDEX),
                ColSpec(DataType.double, image_model.CONFIDENCE),
                ColSpec(Array(DataType.double), image_model.PROBABILITIES),
                ColSpec(DataType.string, image_model.ERROR, required=False)]))
    spark = ModelSignature(Schema([ColSpec(DataType.binary, CONTENT)]), Schema([ColSpec(DataType.double, PREDICTION)]))
    return pyfunc, spark


def log_models(mlflow, spark, cfg: Settings, lay: RunLayout) -> dict:
    """Log the trained pipeline with ``mlflow.spark`` and as the pyfunc image model; return their URIs."""
    import pandas as pd  # optional

    pipeline = load_model(lay.model)
    featurizer = pipeline.stages[0]
    weights = featurizer.resolveWeights()
    info = image_model.describe(pipeline)
    example = _example_image(spark, lay)
    metadata = {k: info[k] for k in ("network", "weights_sha256", "classes")}
    pyfunc_signature, spark_signature = _signatures()
    out = {}
    with tempfile.TemporaryDirectory(prefix="sparkvision-model-") as tmp:
        classifier_json = os.path.join(tmp, "classifier.json")
        with open(classifier_json, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
        with warnings.catch_warnings():  # the signature is given: MLflow's advice to infer one from type hints is moot
            warnings.filterwarnings("ignore", message=".*type hints.*", category=UserWarning)
            pyfunc = mlflow.pyfunc.log_model(
                name=PYFUNC_MODEL, python_model=os.path.join(_package_dir(), "tracking", "pyfunc_model.py"),
                artifacts={"classifier": classifier_json, "weights": weights}, code_paths=[_package_dir()],
                signature=pyfunc_signature, input_example=pd.DataFrame({image_model.INPUT: [example]}),
                pip_requirements=pinned_requirements(spark_flavour=False), metadata=metadata)
        out["pyfunc_model_uri"] = pyfunc.model_uri
        if is_remote(spark):
            # mlflow.spark needs the JVM (py4j) to copy the model; over Spark Connect the saved folder is
            # logged as it is (PipelineModel.load reads it), with the same requirements beside it.
            local = os.path.join(tmp, SPARK_MODEL)
            storage.copy_tree(lay.model, local)
            mlflow.log_artifacts(local, SPARK_MODEL)
            out["spark_model_folder"] = f"runs:/{mlflow.active_run().info.run_id}/{SPARK_MODEL}"  # not an MLmodel
        else:
            spark_model = mlflow.spark.log_model(
                pipeline, SPARK_MODEL, code_paths=[_package_dir()], signature=spark_signature,
                pip_requirements=pinned_requirements(spark_flavour=True), metadata=metadata)
            out["spark_model_uri"] = spark_model.model_uri
    log.info("mlflow: models logged (%s)", ", ".join(out.values()))
    return out


def pipeline_of(info: dict, cfg: Settings):
    """The Spark pipeline (featurizer -> classifier -> labels) that ``classifier.json`` describes: the
    network, weights, image size and batch from the model, the rest (weights cache, mirror, engine ...)
    from this run's settings."""
    params = dict(cfg.featurize.to_params(cfg.network))
    params.pop("weightsPath", None)  # the model's own weights, found in the cache by their checksum
    params.update(modelName=info["network"], weightsChecksum=info["weights_sha256"], maxPixels=info["max_pixels"],
                  batchSize=info["batch_size"])
    featurizer = DeepImageFeaturizer(**params)
    classifier = LogisticModel(coefficients=info["coefficients"], intercepts=info["intercepts"],
                               multinomial=info["multinomial"])
    return assemble(featurizer, classifier, info["classes"])
