"""sparkvision.settings: parsed and validated once (YAML <- --set <- flags), frozen, errors naming the dotted
key, odd values kept exactly, the defaults written once (examples/config.yml says the same). No Spark."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest
import yaml

from sparkvision import settings
from sparkvision.settings import (ConfigError, DataSettings, FeaturizeSettings, NetworkSettings, Settings,
                                  StreamSettings, TrainSettings, dump, load)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "config.yml"
KEYS = [(section, f.name) for section, cls in settings.SECTIONS.items() for f in dataclasses.fields(cls)]
ODD = ["my runs #2", "2024", "a=b", "#x", "", " spaced ", "null", "true", "x: y", "'quoted'", "runs/été"]


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "c.yml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_the_defaults_load_without_a_file():
    cfg = load()
    assert cfg == Settings() == settings.defaults()
    assert cfg.featurize.engine == "auto" and cfg.output.dir == "runs/latest" and cfg.split.seed == 12
    assert cfg.train.reg_param == (0.01, 0.1, 1.0) and cfg.spark.conf == {}


def test_yaml_then_set_then_flags(tmp_path):
    path = _yaml(tmp_path, "train:\n  folds: 4\n  seed: 1\noutput:\n  dir: from-yaml\nsplit:\n  seed: 5\n")
    cfg = load(path, ["train.folds=5", "output.dir=from-set"], {"output.dir": "from-flag"})
    assert (cfg.train.folds, cfg.train.seed, cfg.split.seed, cfg.output.dir) == (5, 1, 5, "from-flag")
    assert load(path).train.folds == 4


def test_set_values_are_yaml_and_a_number_is_a_one_point_grid():
    cfg = load(overrides=["train.max_iter=30", "train.reg_param=[0, 0.5]", "spark.conf={a.b: 1}",
                          "network.weights=", "data.max_file_mb=0.5"])
    assert cfg.train.max_iter == (30,) and cfg.train.reg_param == (0, 0.5)
    assert dict(cfg.spark.conf) == {"a.b": 1} and cfg.network.weights is None and cfg.data.max_file_mb == 0.5


def test_the_legacy_model_section_is_read_as_network(tmp_path, caplog):
    cfg = load(_yaml(tmp_path, "model:\n  name: ResNet50\n"))
    assert cfg.network.name == "ResNet50"
    assert "now called 'network'" in caplog.text


@pytest.mark.parametrize("section, key", KEYS)
def test_a_value_of_the_wrong_type_names_its_dotted_key(section, key, tmp_path):
    wrong = {"x": 1} if key != "conf" else [1]
    with pytest.raises(ConfigError, match=rf"--set {section}\.{key}: config key '{section}\.{key}' must be"):
        load(overrides=[f"{section}.{key}={yaml.safe_dump(wrong, default_flow_style=True).strip()}"])
    with pytest.raises(ConfigError, match=rf"c\.yml: config key '{section}\.{key}' must be"):
        load(_yaml(tmp_path, yaml.safe_dump({section: {key: wrong}})))
    with pytest.raises(ConfigError, match=rf"replace: config key '{section}\.{key}' must be"):
        Settings().replace(**{f"{section}.{key}": wrong})


@pytest.mark.parametrize("override, says", [
    ("split.test_fraction=1.5", "'split.test_fraction' must be a number in (0, 1); got 1.5"),
    ("split.validation_fraction=1", "'split.validation_fraction' must be a number in [0, 1)"),
    ("featurize.engine=tf", "'featurize.engine' must be one of auto, tensorflow, onnxruntime, openvino; got 'tf'"),
    ("featurize.precision=fp16", "'featurize.precision' must be one of fp32, bf16"),
    ("featurize.batch_size=0", "'featurize.batch_size' must be a positive integer"),
    ("featurize.draft=1", "'featurize.draft' must be bool; got 1"),
    ("train.folds=1", "'train.folds' must be an integer >= 2"),
    ("train.max_iter=[]", "'train.max_iter' must be a list of positive integers; got []"),
    ("train.elastic_net_param=[2]", "'train.elastic_net_param' must be a list of numbers in [0, 1]"),
    ("train.metric=auc", "'train.metric' must be one of logLoss, accuracy, f1"),
    ("data.validate=some", "'data.validate' must be one of header, full"),
    ("data.extensions=[1]", "'data.extensions' must be a non-empty list of file extensions"),
    ("stream.trigger=every-5s", "'stream.trigger' must be available-now or processing-time=<number>[ms|s|m]"),
    ("stream.max_file_age=3 days", "'stream.max_file_age' must be null (never) or a duration such as 30d, 12h"),
    ("stream.source=kafka", "'stream.source' must be one of auto, binaryFile, cloudFiles"),
    ("spark.conf={1: x}", "'spark.conf' must be a mapping of Spark settings"),
    ("split.seed=true", "'split.seed' must be int; got True"),
])
def test_every_rule_is_quoted_with_its_key(override, says):
    with pytest.raises(ConfigError) as exc:
        load(overrides=[override])
    assert says in str(exc.value)


@pytest.mark.parametrize("overrides, says", [
    (["split.tets_fraction=0.2"], "--set split.tets_fraction: unknown config key 'split.tets_fraction'; known: "
                                  "split.test_fraction, split.validation_fraction, split.seed"),
    (["trian.folds=2"], "unknown config key 'trian.folds'; known: data, split, network"),
    (["train.folds"], "override 'train.folds' must look like section.key=value"),
    (["data.images=a", "data.manifest=b"], "config keys 'data.images' and 'data.manifest' are exclusive"),
    (["split.test_fraction=0.6", "split.validation_fraction=0.4"],
     "config keys 'split.test_fraction' + 'split.validation_fraction' must be < 1; got 1"),
    (["network.name=AlexNet"], "config key 'network.name'"),
    (["mlflow.tracking_uri=http://me:tok@host:5000"], "config key 'mlflow.tracking_uri': the URL holds credentials"),
    (["mlflow.registry_uri=https://u@reg"], "config key 'mlflow.registry_uri': the URL holds credentials"),
    (["network.mirror_url=https://h/w?sig=abcdefabcdef0123456789abcdef&se=2030"], "network.mirror_url: the URL carries "
                                                                                   "a signed query string"),
])
def test_errors_that_span_keys_or_name_unknown_ones(overrides, says):
    with pytest.raises(ConfigError) as exc:
        load(overrides=overrides)
    assert says in str(exc.value)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yml: unknown section 'trian'"):
        load(_yaml(tmp_path, "trian:\n  folds: 3\n"))
    with pytest.raises(ConfigError, match=r"c\.yml: section 'train' must be a mapping"):
        load(_yaml(tmp_path, "train: 3\n"))
    with pytest.raises(ConfigError, match=r"c\.yml: the top level must be a mapping"):
        load(_yaml(tmp_path, "- a\n"))
    with pytest.raises(ConfigError, match=r"c\.yml: not valid YAML"):
        load(_yaml(tmp_path, "train: [\n"))
    with pytest.raises(ConfigError, match="config file not found: .*nope.yml"):
        load(str(tmp_path / "nope.yml"))


def test_settings_are_frozen():
    cfg = load(overrides=["spark.conf={spark.x: 1}"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.featurize.engine = "tensorflow"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.output = None
    with pytest.raises(TypeError):
        cfg.spark.conf["spark.y"] = 2
    assert isinstance(cfg.train.reg_param, tuple) and isinstance(cfg.data.extensions, tuple)
    plain = cfg.to_dict()
    plain["spark"]["conf"]["spark.y"] = 2
    plain["train"]["reg_param"].append(9.0)
    assert dict(cfg.spark.conf) == {"spark.x": 1} and cfg.train.reg_param == (0.01, 0.1, 1.0)


def test_replace_returns_a_validated_copy():
    cfg = load()
    other = cfg.replace(**{"output.dir": "elsewhere", "train.max_iter": [10, 20], "featurize.engine": "onnxruntime"})
    assert (other.output.dir, other.train.max_iter, other.featurize.engine) == ("elsewhere", (10, 20), "onnxruntime")
    assert cfg.output.dir == "runs/latest" and cfg.featurize.engine == "auto"
    assert other.data == cfg.data  # untouched sections stay equal
    with pytest.raises(ConfigError, match="'train.folds' must be an integer >= 2"):
        cfg.replace(**{"train.folds": 1})
    with pytest.raises(ConfigError, match="unknown config key 'output.folder'"):
        cfg.replace(**{"output.folder": "x"})
    with pytest.raises(ConfigError, match="are exclusive"):
        cfg.replace(**{"data.images": "a", "data.manifest": "b"})


def test_sections_built_directly_are_checked_too():
    assert DataSettings(images="x", extensions=["png"]).extensions == ("png",)
    with pytest.raises(ConfigError, match="DataSettings: config key 'data.max_pixels' must be a positive integer"):
        DataSettings(max_pixels=0)
    with pytest.raises(ConfigError, match="'featurize.engine'"):
        FeaturizeSettings(engine="tpu")
    with pytest.raises(ConfigError, match="exclusive"):
        Settings(data=DataSettings(images="a", manifest="b"))


@pytest.mark.parametrize("value", ODD)
def test_odd_values_round_trip_exactly(value, tmp_path):
    cfg = load(values={"output.dir": value, "data.images": value or None, "mlflow.run_name": value})
    assert cfg.output.dir == value and cfg.mlflow.run_name == value
    written = tmp_path / "config.yaml"
    written.write_text(dump(cfg), encoding="utf-8")
    again = load(str(written))
    assert again == cfg and again.output.dir == value
    assert dump(again) == dump(cfg)
    assert load().replace(**{"output.dir": value}).output.dir == value


@pytest.mark.parametrize("text", ["my runs #2", "#photos", "a#b"])
def test_a_set_value_is_never_read_as_a_yaml_comment(text):
    assert load(overrides=[f"output.dir={text}"]).output.dir == text
    assert load(overrides=["train.reg_param=[0.1, 1]  # two points"]).train.reg_param == (0.1, 1)


def test_the_mirror_url_loses_its_credentials_while_parsed(caplog):
    cfg = load(overrides=["network.mirror_url=http://user:Tok3n@mirror:8080/w/"])
    assert cfg.network.mirror_url == "http://mirror:8080/w/"
    assert "Tok3n" not in dump(cfg) and "Tok3n" not in caplog.text
    assert cfg.replace(**{"output.dir": "x"}).network.mirror_url == "http://mirror:8080/w/"


def test_dump_is_config_yaml_with_credentials_redacted():
    cfg = load(overrides=["spark.conf={spark.hadoop.fs.s3a.secret.key: S3cr3tValue, spark.sql.shuffle.partitions: 2}"])
    text = dump(cfg)
    assert "S3cr3tValue" not in text and "spark.sql.shuffle.partitions: 2" in text
    data = yaml.safe_load(text)
    assert list(data) == list(settings.SECTIONS) == ["data", "split", "network", "featurize", "train", "output",
                                                     "mlflow", "stream", "spark"]
    assert list(data["train"]) == [f.name for f in dataclasses.fields(TrainSettings)]
    assert data["train"]["reg_param"] == [0.01, 0.1, 1.0] and "!!python" not in text  # lists, not tuples
    assert data["spark"]["conf"]["spark.hadoop.fs.s3a.secret.key"] != "S3cr3tValue"


def test_settings_pickle():  # a stream's sink carries them to Spark Connect's server
    cfg = load(overrides=["spark.conf={a: 1}", "train.max_iter=[5]"])
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_the_example_config_documents_every_key_with_its_default():
    documented = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    assert sorted((s, k) for s, keys in documented.items() for k in keys) == sorted(KEYS)
    defaults = Settings().to_dict()
    for section, key in KEYS:
        value, default = documented[section][key], defaults[section][key]
        if isinstance(default, float) and not isinstance(value, bool):
            assert value == pytest.approx(default, abs=1e-4), f"{section}.{key}"  # 0.3333 for 1/3
        else:
            assert value == default, f"{section}.{key}"
    example = load(str(EXAMPLE))
    assert example.replace(**{"split.test_fraction": Settings().split.test_fraction}) == Settings()


def test_trigger_parser():
    assert settings.parse_trigger("available-now") == {"availableNow": True}
    assert settings.parse_trigger(" processing-time=30s ") == {"processingTime": "30000 milliseconds"}
    assert settings.parse_trigger("processing-time=1.5m") == {"processingTime": "90000 milliseconds"}
    assert settings.parse_trigger("processing-time=500ms") == {"processingTime": "500 milliseconds"}
    with pytest.raises(ValueError, match="processing-time=<number>"):
        settings.parse_trigger("every 5 seconds")
    assert StreamSettings(trigger="processing-time=10").trigger == "processing-time=10"


def test_check_uri():
    settings.check_uri(None, "k")
    settings.check_uri("databricks", "k")
    settings.check_uri("http://host:5000", "k")
    with pytest.raises(ConfigError, match="^k: the URL holds credentials"):
        settings.check_uri("https://token@host", "k")


def test_one_bridge_to_the_featurizer_params():
    featurizer = pytest.importorskip("sparkvision.ml.featurizer")
    cfg = load(overrides=["featurize.engine=onnxruntime", "featurize.batch_size=8", "network.cache_dir=/c",
                          "data.max_pixels=1000"])
    runtime = cfg.featurize.to_params()
    assert runtime == {"batchSize": 8, "numThreads": 0, "engine": "onnxruntime", "precision": "fp32", "draft": False}
    full = cfg.featurize.to_params(cfg.network, cfg.data.max_pixels)
    assert full == {**runtime, "modelName": "efficientnet_lite0", "weightsPath": None, "cacheDir": "/c",
                    "mirrorUrl": None, "allowDownload": True, "maxPixels": 1000}
    f = featurizer.DeepImageFeaturizer(**full)
    assert {p.name for p in f.params} >= set(full)
    assert (f.getEngine(), f.getBatchSize(), f.getCacheDir(), f.getMaxPixels()) == ("onnxruntime", 8, "/c", 1000)
    # the Params' defaults are the settings' defaults, not a second copy
    bare = featurizer.DeepImageFeaturizer()
    defaults = FeaturizeSettings().to_params(NetworkSettings(), DataSettings().max_pixels)
    assert {k: bare.getOrDefault(k) for k, v in defaults.items() if v is not None} == \
        {k: v for k, v in defaults.items() if v is not None}
