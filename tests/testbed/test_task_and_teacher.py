"""The demo task's generator and the teacher stand-in, served as a real HTTP server."""
from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from transformers import AutoTokenizer

from gateway.demo.classify import CueClassifier
from gateway.demo.processes import start_teacher
from gateway.demo.student import build_demo_student
from gateway.demo.task import LABELS, PRODUCTS, TicketGenerator, tokenizer_corpus


def test_generator_is_seeded_and_drift_is_a_knob() -> None:
    assert TicketGenerator(3).tickets(50) == TicketGenerator(3).tickets(50)
    assert TicketGenerator(3).tickets(50) != TicketGenerator(4).tickets(50)
    assert {t.phase for t in TicketGenerator(1, drift=0.0).tickets(300)} == {"before"}
    assert {t.phase for t in TicketGenerator(1, drift=1.0).tickets(300)} == {"after"}
    mixed = Counter(t.phase for t in TicketGenerator(1, drift=0.5).tickets(1000))
    assert 400 < mixed["after"] < 600
    with pytest.raises(ValueError):
        TicketGenerator(drift=1.5)


def test_after_world_brings_unseen_vocabulary_and_a_new_label_mix() -> None:
    before = TicketGenerator(2).tickets(2000, "before")
    after = TicketGenerator(2).tickets(2000, "after")
    before_words = {w.lower().strip(".,!?:") for t in before for w in t.text.split()}
    assert not any(p.split()[-1].lower() in before_words for p in PRODUCTS["after"])
    share = lambda ts, lab: sum(t.label == lab for t in ts) / len(ts)  # noqa: E731
    assert share(after, "technical") > 2 * share(before, "technical")
    assert share(after, "shipping") < share(before, "shipping") / 2
    assert {t.label for t in before} == {t.label for t in after} == set(LABELS)


def test_cue_classifier_knows_every_noisy_ticket() -> None:
    classifier = CueClassifier()
    tickets = TicketGenerator(11, drift=0.5, noise=0.8).tickets(3000)
    wrong = [t for t in tickets if classifier.classify(t.text) != t.label]
    assert not wrong, wrong[:5]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_student(tmp_path_factory.mktemp("teacher-student"))


@pytest.fixture(scope="module")
def teacher(student_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    with start_teacher(tokenizer_dir=student_dir, workdir=tmp_path_factory.mktemp("teacher")) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(teacher) -> OpenAI:
    return OpenAI(base_url=f"{teacher.url}/v1", api_key="unused", max_retries=0)


def test_labels_are_single_student_tokens(student_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(student_dir)
    assert all(tok.tokenize(label) == [label] for label in LABELS)
    assert tokenizer_corpus(10)  # the corpus the student's tokenizer was trained on is not empty


def test_teacher_is_labelled_and_answers_correctly(client: OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["demo-teacher"] and models[0].owned_by == "distillgate-demo-teacher"
    for ticket in TicketGenerator(21, drift=0.5).tickets(20):
        resp = client.chat.completions.create(model="demo-teacher", messages=ticket.messages(), max_tokens=4)
        assert resp.choices[0].message.content == ticket.label
        assert resp.choices[0].finish_reason == "stop"
        assert resp.usage.completion_tokens == 1 and resp.usage.prompt_tokens > 5


def test_teacher_top_logprobs_are_student_tokens_over_the_labels(client: OpenAI, student_dir: Path) -> None:
    ticket = TicketGenerator(4).ticket("after")
    resp = client.chat.completions.create(
        model="demo-teacher", messages=ticket.messages(), max_tokens=4, logprobs=True, top_logprobs=8
    )
    (entry,) = resp.choices[0].logprobs.content
    assert entry.token == ticket.label and entry.logprob > math.log(0.7)
    alts = entry.top_logprobs
    assert len(alts) == 8 and alts[0].token == ticket.label
    assert [a.logprob for a in alts] == sorted((a.logprob for a in alts), reverse=True)
    assert {a.token for a in alts[:6]} == set(LABELS)
    assert sum(math.exp(a.logprob) for a in alts) == pytest.approx(1.0, abs=0.01)
    tok = AutoTokenizer.from_pretrained(student_dir)
    pieces = {tok.decode([i]) for i in range(len(tok))}
    assert {a.token for a in alts} <= pieces


def test_teacher_streams_and_respects_max_tokens(client: OpenAI) -> None:
    ticket = TicketGenerator(8).ticket("before")
    chunks = list(client.chat.completions.create(
        model="demo-teacher", messages=ticket.messages(), stream=True, stream_options={"include_usage": True},
        logprobs=True, top_logprobs=2,
    ))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ticket.label
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == 1


def test_teacher_completions_endpoint(client: OpenAI) -> None:
    ticket = TicketGenerator(9).ticket("before")
    resp = client.completions.create(model="demo-teacher", prompt=ticket.text, max_tokens=4, logprobs=3)
    choice = resp.choices[0]
    assert choice.text == ticket.label
    assert choice.logprobs.tokens == [ticket.label] and len(choice.logprobs.top_logprobs[0]) == 3


def test_teacher_errors_are_openai_errors(client: OpenAI, teacher) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="demo-teacher", messages=[])
    resp = httpx.post(f"{teacher.url}/v1/chat/completions", content=b"{not json", timeout=10)
    assert resp.status_code == 400
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
