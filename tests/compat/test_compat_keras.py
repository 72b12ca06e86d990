"""sparkvision.compat.sparkdl's Keras and TensorFlow transformers and registerKerasImageUDF, on tiny models."""


import numpy as np
import pytest
from chispa import assert_approx_df_equality
from PIL import Image
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import functions as F

from sparkvision.compat import sparkdl
from sparkvision.compat._common import ShippedModel
from sparkvision.compat.sparkdl import SparkdlCompatWarning

SIZE = 8
pytestmark = pytest.mark.filterwarnings("ignore::sparkvision.compat.sparkdl.SparkdlCompatWarning")


def _make_loader():
    def load_png(uri: str) -> np.ndarray:
        """An imageLoader as sparkdl documents them: URI -> a preprocessed RGB batch of one."""
        return (np.asarray(Image.open(uri).convert("RGB"), dtype=np.float32) / 255.0)[None]

    return load_png


load_png = _make_loader()  # a local function: pickled by value, the workers cannot import this test module


def _image_model(seed: int = 0, image_out: bool = False):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(2, 3, padding="same", activation="relu")(inputs)
    if not image_out:
        x = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, x)


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module", params=[".keras", ".h5"])
def model_file(request, tmp_path_factory):
    model = _image_model()
    path = str(tmp_path_factory.mktemp("model") / f"model{request.param}")
    model.save(path)
    return path, model


def _exploded(df, key, col):
    """``(key, pos, value)`` rows of an array or vector column: vectors compared value by value."""
    values = vector_to_array(col) if isinstance(df.schema[col].dataType, VectorUDT) else F.col(col)
    return df.select(key, F.posexplode(values).alias("pos", "value")).select(key, "pos", F.col("value").cast("double"))


def _expected(spark, keys, outputs, schema):
    rows = [(k, i, float(v)) for k, out in zip(keys, outputs) for i, v in enumerate(np.ravel(out))]
    return spark.createDataFrame(rows, schema)


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_image_file_transformer_matches_model_predict(spark, pngs, model_file):
    path, model = model_file
    df = spark.createDataFrame([(p,) for p in pngs], "uri string")
    t = sparkdl.KerasImageFileTransformer(inputCol="uri", outputCol="preds", modelFile=path, imageLoader=load_png,
                                          batchSize=2)
    out = t.transform(df)
    assert isinstance(out.schema["preds"].dataType, VectorUDT)
    expected = model.predict(np.concatenate([load_png(p) for p in pngs]), verbose=0)
    got = _exploded(out, "uri", "preds")
    assert_approx_df_equality(got, _expected(spark, pngs, expected, got.schema), precision=1e-5, ignore_row_order=True)


def test_image_output_mode_gives_float_image_structs(spark, pngs, tmp_path):
    model = _image_model(image_out=True)
    path = str(tmp_path / "conv.keras")
    model.save(path)
    df = spark.createDataFrame([(p,) for p in pngs[:2]], "uri string")
    out = sparkdl.KerasImageFileTransformer(inputCol="uri", outputCol="img", modelFile=path, imageLoader=load_png,
                                            outputMode="image").transform(df).collect()
    for row in out:
        img = row.img
        assert (img.origin, img.height, img.width, img.nChannels, img.mode) == (row.uri, SIZE, SIZE, 2, 13)  # CV_32FC2
        expected = model.predict(load_png(row.uri), verbose=0)[0]
        np.testing.assert_allclose(np.frombuffer(img.data, np.float32).reshape(SIZE, SIZE, 2), expected, atol=1e-5)


def test_a_uri_the_loader_cannot_read_gets_null_and_its_reason(spark, pngs, model_file, tmp_path):
    path, _ = model_file
    missing = str(tmp_path / "missing.png")
    df = spark.createDataFrame([(pngs[0],), (missing,)], "uri string")
    with pytest.warns(SparkdlCompatWarning, match="gets a null output"):
        t = sparkdl.KerasImageFileTransformer(inputCol="uri", outputCol="preds", modelFile=path,
                                              imageLoader=load_png, errorCol="error")
        out = {r.uri: r for r in t.transform(df).collect()}
    assert out[pngs[0]].preds is not None and out[pngs[0]].error is None
    assert out[missing].preds is None
    assert missing in out[missing].error and "FileNotFoundError" in out[missing].error


def test_a_loader_giving_the_wrong_shape_fails_naming_the_uri(spark, pngs, model_file):
    path, _ = model_file
    df = spark.createDataFrame([(pngs[0],)], "uri string")
    t = sparkdl.KerasImageFileTransformer(inputCol="uri", outputCol="preds", modelFile=path,
                                          imageLoader=lambda uri: load_png(uri)[:, :4])
    with pytest.raises(Exception, match=r"imageLoader returned an array of shape \(1, 4, 8, 3\)") as err:
        t.transform(df).collect()
    assert pngs[0] in str(err.value)


def test_bad_params_and_inputs_are_clear_errors(spark, tmp_path, model_file):
    path, _ = model_file
    with pytest.raises(ValueError, match="outputMode 'tensor' is not one of vector, image"):
        sparkdl.KerasImageFileTransformer(outputMode="tensor")
    with pytest.raises(TypeError, match="imageLoader must be a function"):
        sparkdl.KerasImageFileTransformer(imageLoader=42)
    df = spark.createDataFrame([(1,)], "uri int")
    with pytest.raises(ValueError, match="input column 'uri' must be string, got int"):
        sparkdl.KerasImageFileTransformer(inputCol="uri", outputCol="o", modelFile=path,
                                          imageLoader=load_png).transform(df)
    with pytest.raises(FileNotFoundError, match="Keras model file not found: .*nope.keras"):
        sparkdl.KerasTransformer(inputCol="x", outputCol="y", modelFile=str(tmp_path / "nope.keras")).transform(
            spark.createDataFrame([([1.0],)], "x array<float>"))


def test_a_changed_model_file_is_reloaded(tmp_path):
    path = str(tmp_path / "m.keras")
    x = np.ones((1, SIZE, SIZE, 3), np.float32)
    _image_model(seed=1).save(path)
    first = ShippedModel.keras_file(path, "test")
    a = first.load().predict_on_batch(x)
    assert ShippedModel.keras_file(path, "test").load() is first.load()  # same file: loaded once
    _image_model(seed=2).save(path)
    second = ShippedModel.keras_file(path, "test")
    assert second.sha256 != first.sha256
    assert not np.allclose(second.load().predict_on_batch(x), a)


def test_image_file_transformer_save_and_load(tmp_path):
    t = sparkdl.KerasImageFileTransformer(inputCol="uri", outputCol="o", modelFile="/models/m.keras",
                                          imageLoader="numpy:load", outputMode="image", batchSize=7)
    t.save(str(tmp_path / "t"))
    loaded = sparkdl.KerasImageFileTransformer.load(str(tmp_path / "t"))
    assert {p.name: v for p, v in loaded.extractParamMap().items()} == \
        {p.name: v for p, v in t.extractParamMap().items()}
    with pytest.raises(ValueError, match="a Python function imageLoader cannot be saved"):
        t.copy({t.imageLoader: load_png}).save(str(tmp_path / "u"))


# ---- KerasTransformer -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dense_file(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(2)])
    path = str(tmp_path_factory.mktemp("dense") / "dense.h5")
    model.save(path)
    return path, model


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_keras_transformer_matches_model_predict(spark, dense_file):
    path, model = dense_file
    x = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    df = spark.createDataFrame([(i, row.tolist()) for i, row in enumerate(x)] + [(7, None)], "id int, x array<float>")
    out = sparkdl.KerasTransformer(inputCol="x", outputCol="y", modelFile=path, batchSize=3).transform(df)
    assert out.schema["y"].dataType.simpleString() == "array<float>"
    assert out.filter("id = 7").first().y is None
    got = _exploded(out, "id", "y")
    assert_approx_df_equality(got, _expected(spark, range(7), model.predict(x, verbose=0), got.schema),
                              precision=1e-5, ignore_row_order=True)


def test_keras_transformer_rejects_rows_of_the_wrong_length(spark, dense_file):
    path, _ = dense_file
    df = spark.createDataFrame([([1.0, 2.0],)], "x array<double>")
    with pytest.raises(Exception, match=r"a row of 'x' has 2 values; the model takes 5"):
        sparkdl.KerasTransformer(inputCol="x", outputCol="y", modelFile=path).transform(df).collect()


def test_keras_transformer_save_and_load(tmp_path, dense_file):
    t = sparkdl.KerasTransformer(inputCol="x", outputCol="y", modelFile=dense_file[0])
    t.save(str(tmp_path / "k"))
    loaded = sparkdl.KerasTransformer.load(str(tmp_path / "k"))
    assert loaded.getModelFile() == dense_file[0] and loaded.getInputCol() == "x" and loaded.getBatchSize() == 32


# ---- registerKerasImageUDF ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_structs(spark):
    """Five 8x8 images as Spark image structs (BGR), with their RGB pixels."""
    from sparkvision.run import images as imglib

    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    rows = [(i, imglib.bgr_array_to_struct(rgb[i][..., ::-1], f"img{i}")) for i in range(5)]
    return spark.createDataFrame(rows, f"id int, image {sparkdl.IMAGE_SCHEMA.simpleString()}"), rgb


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_registered_udf_runs_in_sql(spark, image_structs, model_file):
    path, model = model_file
    df, rgb = image_structs
    sparkdl.registerKerasImageUDF("tiny_model", path)
    df.createOrReplaceTempView("tiny_images")
    out = spark.sql("SELECT id, tiny_model(image) AS out FROM tiny_images")
    assert out.schema["out"].dataType.simpleString() == "array<float>"
    got = _exploded(out, "id", "out")
    expected = model.predict(rgb.astype(np.float32), verbose=0)
    assert_approx_df_equality(got, _expected(spark, range(5), expected, got.schema), precision=1e-4,
                              ignore_row_order=True)


@pytest.mark.slow  # over 5 s with its fixtures: in make test-slow, to keep make test within 4 minutes
def test_registered_udf_with_a_preprocessor_and_a_model_object(spark, image_structs):
    df, rgb = image_structs
    model = _image_model(seed=4)
    udf = sparkdl.registerKerasImageUDF("tiny_pre", model, preprocessor=load_png)
    got = _exploded(df.select("id", udf("image").alias("out")), "id", "out")
    expected = model.predict(rgb.astype(np.float32) / 255.0, verbose=0)
    assert_approx_df_equality(got, _expected(spark, range(5), expected, got.schema), precision=1e-5,
                              ignore_row_order=True)


def test_registered_udf_refuses_what_it_cannot_use(tmp_path):
    with pytest.raises(TypeError, match="expected a Keras model or the path"):
        sparkdl.registerKerasImageUDF("bad", 42)
    with pytest.raises(FileNotFoundError, match="Keras model file not found"):
        sparkdl.registerKerasImageUDF("bad", str(tmp_path / "none.h5"))


# ---- TFImageTransformer, TFInputGraph, TFTransformer ---------------------------------------------------------

WEIGHTS = np.array([1.0, 2.0, 3.0], np.float32)


def _channel_scores():
    """A tf.function: mean over the image of each channel times WEIGHTS (so RGB and BGR differ)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="pixels")])
    def scores(pixels):
        return {"scores": tf.reduce_mean(pixels, axis=[1, 2]) * WEIGHTS, "doubled": pixels * 2.0}

    return scores


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    import tensorflow as tf

    fn = _channel_scores()
    holder = tf.Module()
    holder.fn = fn
    path = str(tmp_path_factory.mktemp("tf") / "scores")
    tf.saved_model.save(holder, path, signatures={"serving_default": fn})
    return path


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_tf_image_transformer_runs_a_saved_model_signature(spark, image_structs, saved_model, order):
    df, rgb = image_structs
    t = sparkdl.TFImageTransformer(channelOrder=order, inputCol="image", outputCol="scores", graph=saved_model,
                                   inputTensor="pixels:0", outputTensor="scores", batchSize=2)
    got = _exploded(t.transform(df), "id", "scores")
    pixels = rgb.astype(np.float32) if order == "RGB" else rgb[..., ::-1].astype(np.float32)
    expected = pixels.mean(axis=(1, 2)) * WEIGHTS
    assert_approx_df_equality(got, _expected(spark, range(5), expected, got.schema), precision=1e-3,
                              ignore_row_order=True)


def test_tf_image_transformer_takes_a_tf_function_and_outputs_images(image_structs):
    df, rgb = image_structs
    t = sparkdl.TFImageTransformer(channelOrder="RGB", inputCol="image", outputCol="out", graph=_channel_scores(),
                                   outputTensor="doubled", outputMode="image")
    for row in t.transform(df).collect():
        img = row.out
        assert (img.origin, img.height, img.width, img.nChannels, img.mode) == (f"img{row.id}", SIZE, SIZE, 3, 21)
        np.testing.assert_allclose(np.frombuffer(img.data, np.float32).reshape(SIZE, SIZE, 3), rgb[row.id] * 2.0)
    with pytest.raises(ValueError, match="a tf.function graph cannot be saved"):
        t.save("/nonexistent/never-written")


def test_tf_image_transformer_errors_name_the_problem(image_structs, saved_model):
    import tensorflow as tf

    df, _ = image_structs
    with pytest.raises(TypeError, match="TensorFlow 1 graphs and sessions do not exist in TensorFlow 2"):
        sparkdl.TFImageTransformer(graph=tf.Graph())
    with pytest.raises(ValueError, match=r"has no output 'logits'; it has \['doubled', 'scores'\]"):
        sparkdl.TFImageTransformer(inputCol="image", outputCol="o", graph=saved_model,
                                   outputTensor="logits").transform(df)
    with pytest.raises(ValueError, match="channelOrder 'HSV' is not one of RGB, BGR, L"):
        sparkdl.TFImageTransformer(channelOrder="HSV")


def test_tf_image_transformer_save_and_load(tmp_path, saved_model):
    t = sparkdl.TFImageTransformer(channelOrder="BGR", inputCol="image", outputCol="o", graph=saved_model,
                                   inputTensor="pixels", outputTensor="scores")
    t.save(str(tmp_path / "t"))
    loaded = sparkdl.TFImageTransformer.load(str(tmp_path / "t"))
    assert {p.name: v for p, v in loaded.extractParamMap().items()} == \
        {p.name: v for p, v in t.extractParamMap().items()}


@pytest.fixture(scope="module")
def two_input_model(tmp_path_factory):
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="a"),
                                  tf.TensorSpec([None, 3], tf.float32, name="b")])
    def fn(a, b):
        return {"sum": a + b, "dot": tf.reduce_sum(a * b, axis=1, keepdims=True)}

    holder = tf.Module()
    holder.fn = fn
    path = str(tmp_path_factory.mktemp("tf2") / "two")
    tf.saved_model.save(holder, path, signatures={"serving_default": fn})
    return path


def test_tf_transformer_maps_columns_to_a_signature(spark, two_input_model, tmp_path):
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    df = spark.createDataFrame([(i, a[i].tolist(), b[i].tolist()) for i in range(6)], "id int, x array<double>, y array<double>")
    graph = sparkdl.TFInputGraph.fromSavedModel(two_input_model, ["serve"], ["a:0", "b:0"], ["sum:0", "dot:0"])
    t = sparkdl.TFTransformer(tfInputGraph=graph, inputMapping={"x": "a", "y": "b"},
                              outputMapping={"sum": "s", "dot": "d"}, batchSize=4)
    out = t.transform(df)
    for col, expected in (("s", a + b), ("d", (a * b).sum(axis=1))):
        got = _exploded(out, "id", col)
        assert_approx_df_equality(got, _expected(spark, range(6), expected, got.schema), precision=1e-5,
                                  ignore_row_order=True)
    t.save(str(tmp_path / "tft"))
    loaded = sparkdl.TFTransformer.load(str(tmp_path / "tft"))
    assert loaded.getTFInputGraph().to_dict() == graph.to_dict()
    assert loaded.getInputMapping() == [["x", "a"], ["y", "b"]]


def test_tf_input_graph_refuses_tf1_constructors():
    for name in ("fromGraph", "fromGraphDef", "fromCheckpoint", "fromCheckpointWithSignature"):
        with pytest.raises(NotImplementedError, match="TensorFlow 2"):
            getattr(sparkdl.TFInputGraph, name)(None, None, None)


def _tar(members) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
    return buffer.getvalue()


def test_shipped_saved_model_archive_unpacks_files_and_refuses_escapes(tmp_path):
    from sparkvision.compat._common import _extract

    good = tmp_path / "good"
    _extract(_tar([("variables", b"", "dir"), ("variables/v.index", b"abc", "file"), ("saved_model.pb", b"pb", "file")]),
             str(good), "m")
    assert (good / "variables" / "v.index").read_bytes() == b"abc" and (good / "saved_model.pb").read_bytes() == b"pb"
    for bad, why in [([("../escape.pb", b"x", "file")], "leaves its folder"),
                     ([("/abs.pb", b"x", "file")], "leaves its folder"),
                     ([("link", b"", "symlink")], "not a file or folder")]:
        with pytest.raises(ValueError, match=why) as info:
            _extract(_tar(bad), str(tmp_path / "bad"), "my-model")
        assert "my-model" in str(info.value) and bad[0][0] in str(info.value)
    assert not (tmp_path / "escape.pb").exists()
