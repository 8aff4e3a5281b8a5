"""``photocap evaluate``: pycocoevalcap scores of a trained model on a (fake) Flickr8k split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from flickr_fixtures import (
    TinyRun,
    tiny_run_fixture,  # noqa: F401
)
from typer.testing import CliRunner

from photocap.cli import app
from photocap.errors import DatasetError, ModelError
from photocap.training.cider import corpus_cider
from photocap.training.evaluation import METRICS, evaluate_model, score_captions
from photocap.vocab import tokenize

pytest.importorskip("pycocoevalcap")

REFS = [
    ["A dog runs on the grass.", "A brown dog is running on green grass .", "The dog plays."],
    ["A man swims in the water.", "A man is swimming .", "Someone swims, far out."],
    ["A child plays in the park.", "A little child is playing in a park .", "Kids play."],
]


@pytest.fixture
def no_java(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_scores_without_java(no_java: None) -> None:
    perfect = [r[0] for r in REFS]
    scores, notes = score_captions(perfect, REFS)
    assert set(scores) == set(METRICS)
    assert scores["METEOR"] is None and any("java" in n for n in notes)
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE-L"] > 0.6
    # the fallback tokeniser is photocap's: the CIDEr is the in-process CIDEr-D's
    want = corpus_cider([tokenize(h) for h in perfect], [[tokenize(r) for r in g] for g in REFS])
    assert scores["CIDEr"] == pytest.approx(want, abs=1e-6)
    poor, _ = score_captions(["A cat.", "A cat.", "A cat."], REFS)
    assert poor["CIDEr"] < scores["CIDEr"] and poor["BLEU-1"] < scores["BLEU-1"]


def test_empty_hypothesis_is_scored_not_crashed(no_java: None) -> None:
    scores, _ = score_captions(["", "A man swims in the water.", ""], REFS)
    assert all(scores[m] is not None for m in METRICS if m != "METEOR")
    assert 0.0 <= scores["BLEU-1"] <= 1.0


def test_evaluate_model_on_the_dev_split(tiny_run: TinyRun) -> None:
    report = evaluate_model(
        tiny_run.fake.root, "dev", tiny_run.out, beam_size=2, device="cpu", batch_size=3, examples=2
    )
    assert report.split == "dev" and report.photos == 4 and report.beam_size == 2
    assert list(report.scores) == list(METRICS)
    for name, value in report.scores.items():
        if name == "METEOR" and shutil.which("java") is None:
            assert value is None
            continue
        assert isinstance(value, float), name
        assert value >= 0.0
        if name != "CIDEr":
            assert value <= 1.0
    if shutil.which("java"):
        assert isinstance(report.scores["METEOR"], float) and report.notes == []
    assert report.model_id.startswith("photocap-tiny-lstm@")
    assert len(report.examples) == 2
    first = report.examples[0]
    assert first["image"] == tiny_run.fake.dev[0]
    assert first["references"] == tiny_run.fake.captions[tiny_run.fake.dev[0]]
    assert first["caption"].endswith(".")
    assert json.loads(json.dumps(report.to_dict()))["photos"] == 4


def test_evaluate_errors(tiny_run: TinyRun, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="test"):
        evaluate_model(tiny_run.fake.root, "test", tiny_run.out, device="cpu")
    with pytest.raises(ModelError):
        evaluate_model(tiny_run.fake.root, "dev", tmp_path / "none.safetensors", device="cpu")


def test_cli_evaluate_json(tiny_run: TinyRun, no_java: None) -> None:
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--data",
            str(tiny_run.fake.root),
            "--model",
            str(tiny_run.out),
            "--device",
            "cpu",
            "--beam-size",
            "1",
            "--limit",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["photos"] == 3 and report["beam_size"] == 1 and report["split"] == "dev"
    assert set(report["scores"]) == set(METRICS)
    assert report["scores"]["METEOR"] is None
    assert all(isinstance(report["scores"][m], float) for m in METRICS if m != "METEOR")
    assert report["notes"]


def test_cli_evaluate_table_and_errors(tiny_run: TinyRun, no_java: None) -> None:
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--data",
            str(tiny_run.fake.root),
            "--model",
            str(tiny_run.out),
            "--device",
            "cpu",
            "--limit",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "CIDEr" in result.stdout and tiny_run.fake.dev[0] in result.stdout
    bad = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--data",
            str(tiny_run.fake.root),
            "--model",
            str(tiny_run.out),
            "--split",
            "test",
            "--device",
            "cpu",
        ],
    )
    assert bad.exit_code == 2 and bad.stderr.startswith("Error: ")
