"""The embedding scorer on a real (tiny, locally built) transformers model; skipped without torch."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from evaluator.scorers import build_scorer  # noqa: E402
from evaluator.settings import ScorerSettings  # noqa: E402
from redistill.tinymodel import build_student, build_tokenizer  # noqa: E402

CORPUS = ["my card was charged twice", "where is my refund", "I cannot log in to my account"] * 20


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("embed")
    return build_student(out, build_tokenizer(CORPUS, vocab_size=400), hidden=64, layers=1, heads=2, kv_heads=1)


def test_embedding_scorer_bounds_identity_and_symmetry(model_dir: Path) -> None:
    scorer = build_scorer(ScorerSettings(kind="embedding", embedding_model=str(model_dir), threshold=0.9))
    assert scorer.similarity("where is my refund", "where is my refund") == 1.0
    a, b = "my card was charged twice", "I cannot log in to my account"
    value = scorer.similarity(a, b)
    assert 0.0 <= value < 1.0
    assert value == pytest.approx(scorer.similarity(b, a), abs=1e-5)


def test_embedding_scorer_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    from evaluator.scorers import ScorerUnavailable

    with pytest.raises(ScorerUnavailable, match="cannot load embedding model"):
        build_scorer(ScorerSettings(kind="embedding", embedding_model=str(tmp_path / "missing")))
