"""The Databricks bundle as `sparkvision bundle validate` checks it: the real files for every target, the CLI,
and the generated job-cluster include."""

import pytest
import yaml

from sparkvision import cli
from sparkvision.deploy import bundle

from bundle_helpers import ROOT, TARGETS, edit_yaml, problems_of


@pytest.mark.parametrize("target", TARGETS)
def test_bundle_is_valid(target, capsys):
    assert cli.main(["bundle", "validate", "--root", str(ROOT), "--target", target]) == 0
    assert (f"bundle valid for target {target}: sparkvision_pipeline (4 tasks), sparkvision_predict (1 tasks), "
            "sparkvision_stream (1 tasks)") in capsys.readouterr().out


def test_default_target_is_dev():
    assert bundle.validate(ROOT)["target"] == "dev"


def test_generated_cluster_include_is_current():
    assert (ROOT / bundle.CLUSTERS_INCLUDE).read_text() == bundle.render_clusters_include(ROOT / "infra" / "clusters")
    variables = yaml.safe_load((ROOT / bundle.CLUSTERS_INCLUDE).read_text())["variables"]
    for name in ("cpu_cluster", "gpu_cluster"):
        assert variables[name]["default"]["kind"] == "CLASSIC_PREVIEW"


def test_stale_cluster_include(project):
    spec = project / "infra" / "clusters" / "cpu.yml"
    spec.write_text(spec.read_text().replace("memory: 8g\n  memory_overhead", "memory: 9g\n  memory_overhead"))
    assert "infra/databricks/clusters.yml: stale or missing" in problems_of(project)


def test_cli_reports_problems_with_exit_1(project, capsys):
    edit_yaml(project / "bundle.yml", lambda d: d["include"].append("pipelines/*.yml"))
    assert cli.main(["bundle", "validate", "--root", str(project)]) == 1
    assert "include[2]: 'pipelines/*.yml' matches no file" in capsys.readouterr().err
