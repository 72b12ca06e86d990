"""Multi-class handwritten digits: the original Spark 2.4 + sparkdl multi-class recipe, run on sparkvision (10
classes x 50 images generated from scikit-learn's digits). It reads each class folder with Spark 2.4's
``ImageSchema.readImages``, which Spark 3 removed. Only the imports and the data paths differ from the original;
the last part adds true one-vs-rest ROC AUC from the probabilities beside the original's AUC of one-hot labels.

    .venv/bin/python examples/digits_multiclass.py [--out runs/examples/digits] [--network InceptionV3 --weights FILE]
"""
import argparse
import os
from functools import reduce

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from pyspark.ml import Pipeline
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.functions import vector_to_array
from pyspark.sql.functions import lit
from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score
from sklearn.preprocessing import label_binarize

# from pyspark.ml.image import ImageSchema                            # Spark 2.3 / 2.4
# from sparkdl import DeepImageFeaturizer                             # sparkdl: Spark 2.x, TensorFlow 1
from sparkvision.compat.image import ImageSchema                       # sparkvision: Spark 4, TensorFlow 2
from sparkvision.compat.sparkdl import DeepImageFeaturizer
from sparkvision.run.sample_data import make_digits
from sparkvision.run.spark import get_spark

# ---- data paths and model (the original read one folder of scanned digits per class, InceptionV3) --------
parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--out", default="runs/examples/digits", help="where the images and the plot go")
parser.add_argument("--network", default="efficientnet_lite0", help="featurizer CNN (offline default)")
parser.add_argument("--weights", default=None, help="weights file, for models whose weights are not installed")
ARGS = parser.parse_args()
img_dir = make_digits(os.path.join(ARGS.out, "images"), per_class=50)
spark = get_spark(app_name="digits-multiclass")  # on Databricks: the notebook's `spark`

# ---- the original recipe ---------------------------------------------------------------------------------
dataframes = [ImageSchema.readImages(img_dir + "/" + str(digit)).withColumn("label", lit(digit)) for digit in range(10)]
df = reduce(lambda a, b: a.union(b), dataframes)
df = df.repartition(200)
train, test = df.randomSplit([0.8, 0.2], 42)

featurizer = DeepImageFeaturizer(inputCol="image", outputCol="features", modelName=ARGS.network, weightsPath=ARGS.weights)
lr = LogisticRegression(maxIter=5, regParam=0.03, elasticNetParam=0.5, labelCol="label")
sparkdn = Pipeline(stages=[featurizer, lr])
spark_model = sparkdn.fit(train)

predictions = spark_model.transform(test)
for metric in ("f1", "weightedPrecision", "weightedRecall", "accuracy"):
    evaluator = MulticlassClassificationEvaluator(labelCol="label", predictionCol="prediction", metricName=metric)
    print(f"{metric}: {evaluator.evaluate(predictions):.4f}")

pdf = predictions.select("label", "prediction", vector_to_array("probability").alias("p")).toPandas()
y_true, y_pred = pdf["label"].to_numpy(), pdf["prediction"].to_numpy().astype(int)
cm = confusion_matrix(y_true, y_pred, labels=list(range(10)))
fig, ax = plt.subplots(figsize=(6, 6))
ax.imshow(cm, cmap="Blues")
for (i, j), v in np.ndenumerate(cm):
    ax.text(j, i, str(v), ha="center", va="center")
ax.set(xlabel="predicted", ylabel="true", xticks=range(10), yticks=range(10), title="Confusion matrix")
fig.savefig(os.path.join(ARGS.out, "confusion_matrix.png"), dpi=100, bbox_inches="tight")
print(classification_report(y_true, y_pred, labels=list(range(10)), zero_division=0))

# ---- the honest comparison (sparkvision addition) --------------------------------------------------------
proba = np.stack(pdf["p"].to_numpy())
present = np.unique(y_true)
results = {
    "n": len(y_true),
    "accuracy": MulticlassClassificationEvaluator(metricName="accuracy").evaluate(predictions),
    "f1": MulticlassClassificationEvaluator(metricName="f1").evaluate(predictions),
    # one-vs-rest ROC AUC from the probabilities, macro over the classes present in the test split
    "roc_auc_ovr": float(np.mean([roc_auc_score(y_true == c, proba[:, c]) for c in present])),
    # the original's figure: ROC AUC of the one-hot *predicted labels* against the one-hot true labels. Hard
    # labels rank nothing, so it is a rescaled per-class accuracy, not a ROC AUC.
    "auc_of_one_hot_labels": float(roc_auc_score(label_binarize(y_true, classes=present),
                                                 label_binarize(y_pred, classes=present), average="macro")),
}
print(f"test images {results['n']}: accuracy {results['accuracy']:.4f}, weighted F1 {results['f1']:.4f}, "
      f"one-vs-rest ROC AUC {results['roc_auc_ovr']:.4f} (from probabilities); the original's AUC of one-hot "
      f"labels {results['auc_of_one_hot_labels']:.4f} (hard labels: not a ranking measure); confusion matrix in "
      f"{ARGS.out}/confusion_matrix.png")
