"""sparkvision.cli: flags -> settings (typed, never YAML), the demo's settings, exit code 2 with the key named
for configuration errors. Quick: every command here stops before a Spark session starts."""

from __future__ import annotations

import pytest
import yaml

from sparkvision import cli
from sparkvision.run.layout import RunLayout
from sparkvision.settings import dump, load

ODD = ["my runs #2", "2024", "a=b", "#2", "", "null", "1e3", "runs/été"]


def _settings(*argv):
    return cli.resolve_config(cli.build_parser().parse_args(list(argv)))


@pytest.fixture(autouse=True)
def _no_tracking(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DATABRICKS_RUNTIME_VERSION", "SPARK_REMOTE"):
        monkeypatch.delenv(name, raising=False)


def test_flags_are_typed_not_yaml():
    cfg = _settings("run", "--output", "2024", "--images", "my runs #2", "--network", "ResNet50",
                    "--master", "local[1]", "--weights", "w.h5")
    assert cfg.output.dir == "2024" and cfg.data.images == "my runs #2"
    assert (cfg.network.name, cfg.network.weights, cfg.spark.master) == ("ResNet50", "w.h5", "local[1]")
    cfg = _settings("predict", "--model", "m", "--images", "new", "--output", "p #1")
    assert cfg.data.images is None  # predict's --images is its input, not training data
    cfg = _settings("stream", "--model", "m", "--images", "in", "--output", "o", "--trigger", "processing-time=5s",
                    "--checkpoint", "ck #1", "--max-files-per-trigger", "7")
    assert (cfg.stream.trigger, cfg.stream.checkpoint, cfg.stream.max_files_per_trigger) == ("processing-time=5s",
                                                                                              "ck #1", 7)
    assert cfg.data.images is None


@pytest.mark.parametrize("value", ODD)
def test_output_round_trips_exactly_into_the_settings_and_config_yaml(value, tmp_path):
    cfg = _settings("load", "--images", "imgs", "--output", value)
    assert cfg.output.dir == value
    text = dump(cfg)
    assert yaml.safe_load(text)["output"]["dir"] == value
    (tmp_path / "config.yaml").write_text(text, encoding="utf-8")
    assert load(str(tmp_path / "config.yaml")).output.dir == value


def test_flags_win_over_set_and_config(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text("output:\n  dir: from-file\nnetwork:\n  name: VGG16\n", encoding="utf-8")
    cfg = _settings("run", "--config", str(path), "--set", "output.dir=from-set", "--output", "from-flag")
    assert cfg.output.dir == "from-flag" and cfg.network.name == "VGG16"
    assert _settings("run", "--config", str(path), "--set", "output.dir=from-set").output.dir == "from-set"


def test_the_demo_settings_are_built_not_edited():
    args = cli.build_parser().parse_args(["run"])
    cfg = cli.resolve_config(args)
    assert cli._is_demo(cfg, args)
    demo = cli.demo_settings(cfg, args)
    assert demo.output.dir == cli.DEMO_OUTPUT and demo.data.images == RunLayout(cli.DEMO_OUTPUT).sample_data
    assert cfg.output.dir == "runs/latest" and cfg.data.images is None  # the loaded settings are untouched
    args = cli.build_parser().parse_args(["run", "--output", "my runs #2"])
    demo = cli.demo_settings(cli.resolve_config(args), args)
    assert demo.output.dir == "my runs #2" and demo.data.images == RunLayout("my runs #2").sample_data
    args = cli.build_parser().parse_args(["run", "--set", "output.dir=elsewhere"])
    assert cli.demo_settings(cli.resolve_config(args), args).output.dir == "elsewhere"
    args = cli.build_parser().parse_args(["run", "--images", "x"])
    assert not cli._is_demo(cli.resolve_config(args), args)


@pytest.mark.parametrize("argv, says", [
    (["run", "--set", "split.test_fration=0.2"], "split.test_fration"),
    (["run", "--set", "split.test_fraction=1.5"], "'split.test_fraction' must be a number in (0, 1)"),
    (["run", "--set", "train.folds"], "override 'train.folds' must look like section.key=value"),
    (["featurize", "--network", "AlexNet"], "config key 'network.name': unknown model 'AlexNet'"),
    (["run", "--images", "a", "--set", "featurize.engine=tf"], "--set featurize.engine: config key 'featurize.engine'"),
    (["stream", "--model", "m", "--images", "i", "--output", "o", "--trigger", "soon"], "'stream.trigger'"),
    (["run", "--config", "/nonexistent/c.yml"], "config file not found: /nonexistent/c.yml"),
    (["load"], "no input: give --images DIR or --manifest CSV"),
    (["run", "--images", "a", "--manifest", "b"], "'data.images' and 'data.manifest' are exclusive"),
    (["run", "--images", "a", "--register", "m"], "--register (mlflow.registered_model) needs MLflow tracking"),
    (["predict", "--model", "m", "--images", "i"], "predict needs --output DIR"),
    (["predict", "--model", "models:/m@champion", "--images", "i", "--output", "o"],
     "a registered model needs MLflow tracking"),
    (["stream", "--model", "m", "--images", "i"], "stream needs --output DIR"),
    (["weights", "AlexNet"], "AlexNet"),
])
def test_configuration_errors_exit_2_naming_what_is_wrong(argv, says, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparkvision: error: ") and says in err, err


def test_a_bad_config_file_names_the_file_and_section(tmp_path, capsys):
    bad = tmp_path / "c.yml"
    bad.write_text("trian:\n  folds: 3\n", encoding="utf-8")
    assert cli.main(["train", "--config", str(bad)]) == 2
    assert "c.yml: unknown section 'trian'" in capsys.readouterr().err


def test_credentials_in_errors_are_redacted(capsys):
    assert cli.main(["run", "--set", "mlflow.tracking_uri=https://me:S3cretTok3n@host"]) == 2
    err = capsys.readouterr().err
    assert "'mlflow.tracking_uri'" in err and "S3cretTok3n" not in err


@pytest.mark.parametrize("command", ["load", "featurize", "train", "evaluate", "predict", "run", "stream", "weights"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert "--" in capsys.readouterr().out
