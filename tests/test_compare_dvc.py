"""What DVC makes of the compare stage's outputs: `dvc metrics show / diff` on compare.json, `dvc plots show`
overlaying base and adapted curves (dvc.yaml's top-level plots). Real DVC in a scratch git repo."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_compare_stage import BETTER, SAME, compare, write_csv, write_inputs
from tests.test_pipeline_e2e import TINY_PARAMS, git, run


def compare_in(repo, accuracy) -> dict:
    write_inputs(repo, accuracy)
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS, sort_keys=False))  # what dvc.yaml interpolates
    for model, offset in (("base", 0.3), ("adapted", 0.0)):  # the stage-level curves dvc plots overlays
        for name in ("train_loss", "dev_loss"):
            write_csv(repo / "reports" / "finetune" / model / f"{name}.csv",
                      [(step, 2.0 - 0.1 * step + offset) for step in range(0, 12, 2)])
    return compare(repo)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("dvc-compare")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    (repo / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    git(repo, "init", "-q")
    run(repo, "dvc", "init", "-q")
    compare_in(repo, BETTER)
    git(repo, "add", "-A")
    git(repo, "add", "-f", "reports")  # the metrics of the baseline revision `dvc metrics diff` compares with
    git(repo, "commit", "-qm", "baseline")
    return repo


def test_metrics_show_reads_verdicts_and_cis(repo):
    shown = json.loads(run(repo, "dvc", "metrics", "show", "--json"))
    c = shown[""]["data"]["reports/compare.json"]["data"]
    acc = c["downstream"]["metrics"]["accuracy"]["difference"]
    assert acc["verdict"] == "better" and c["verdict"] == "better"
    assert 0 < acc["ci95_low"] < acc["mean"] < acc["ci95_high"]  # scalars: DVC drops lists, keeps these
    assert c["mlm"]["loss_difference"]["verdict"] == "better"
    assert c["data"]["leaked_lines"] == 3


def test_metrics_diff_between_experiments(repo):
    compare_in(repo, SAME)
    diff = json.loads(run(repo, "dvc", "metrics", "diff", "--json"))["reports/compare.json"]
    assert diff["verdict"] == {"old": "better", "new": "no significant difference"}
    mean = diff["downstream.metrics.accuracy.difference.mean"]
    assert mean["old"] == pytest.approx(0.06) and mean["new"] == pytest.approx(0.0)


def test_plots_show_overlays_base_and_adapted(repo):
    plots = json.loads(run(repo, "dvc", "plots", "show", "--json"))["data"]
    for title in ("Downstream train loss (mean over seeds)", "Downstream dev loss (mean over seeds)"):
        (plot,) = plots[title]
        values = plot["content"]["data"]["values"]
        files = {v["filename"] for v in values}
        assert files == {"base/" + title.split()[1] + "_loss.csv", "adapted/" + title.split()[1] + "_loss.csv"}
        base = [float(v["loss"]) for v in values if v["filename"].startswith("base/")]
        adapted = [float(v["loss"]) for v in values if v["filename"].startswith("adapted/")]
        assert len(base) == len(adapted) == 6 and all(b > a for b, a in zip(base, adapted))
    # and `dvc plots show` renders them to a page
    out = run(repo, "dvc", "plots", "show", "-o", "plots-page")
    assert "plots-page" in out and (repo / "plots-page" / "index.html").is_file()
