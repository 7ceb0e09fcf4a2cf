"""A toy intent task on the testbed's tiny student, shared by the redistill tests."""
from __future__ import annotations

import hashlib
from pathlib import Path

from redistill.records import Example
from redistill.tinymodel import build_student, build_tokenizer

SYSTEM = "Classify the support ticket. Answer with one word."
INTENTS = {
    "billing": ["I was charged twice on my invoice", "my card was billed again", "refund the extra charge"],
    "shipping": ["where is my parcel", "the tracking shows no update", "my package is late"],
    "account": ["I cannot log in to my account", "reset my password please", "my login is locked"],
    "cancel": ["please cancel my subscription", "stop my plan now", "I want to end my membership"],
}
# New phrasings that arrive with drift: the base student never saw them.
DRIFTED = {
    "billing": ["why is there a double payment on my statement", "the price on my bill is wrong"],
    "shipping": ["courier never delivered the box", "delivery date keeps slipping"],
    "account": ["two factor code never arrives", "my profile email cannot be changed"],
    "cancel": ["terminate the contract today", "no longer want this service"],
}


def corpus() -> list[str]:
    lines = [SYSTEM] + [t for d in (INTENTS, DRIFTED) for ts in d.values() for t in ts] + list(INTENTS)
    return lines * 20


def make_student(directory: Path) -> Path:
    """A random tiny Llama (what vLLM serves in tests)."""
    return build_student(directory, build_tokenizer(corpus(), vocab_size=600), seed=0)


def make_distilled_student(directory: Path) -> Path:
    """A student first distilled (full fine-tune) on the original phrasings: a realistic base to adapt."""
    from redistill.settings import TrainSettings
    from redistill.train import train

    raw = make_student(directory / "random")
    result = train(examples(), raw, directory / "distill", TrainSettings(
        method="full", learning_rate=3e-3, batch_size=12, max_steps=30, max_length=64, warmup_ratio=0.0,
        early_stopping_patience=100), progress=False)
    return result.output_dir


def example(text: str, label: str, *, topk: list[dict[str, float]] | None = None, slice_: str = "default") -> Example:
    request = {"model": "intent", "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
               "temperature": 0, "max_tokens": 4}
    h = hashlib.sha256(text.encode()).hexdigest()
    return Example(request_hash=h, request_id="r-" + h[:8], model="intent", slice=slice_, endpoint="chat",
                   request=request, target=label, target_source="teacher", teacher_text=label, top_logprobs=topk)


def examples(tokenizer=None, source: dict[str, list[str]] = INTENTS) -> list[Example]:
    """Every (ticket, intent) pair; with a tokenizer, teacher top-2 logprobs in its vocabulary."""
    out = []
    labels = list(INTENTS)
    for label, texts in source.items():
        topk = None
        if tokenizer is not None:
            ids = tokenizer(label, add_special_tokens=False)["input_ids"]
            other = labels[(labels.index(label) + 1) % len(labels)]
            alt = tokenizer.decode(tokenizer(other, add_special_tokens=False)["input_ids"][:1])
            topk = [{tokenizer.decode([i]): -0.05, alt: -3.0} for i in ids]
        out += [example(t, label, topk=topk) for t in texts]
    return out


def label_scorer():
    """The evaluator's real label scorer, configured for this task."""
    from evaluator.scorers import build_scorer
    from evaluator.settings import ScorerSettings

    return build_scorer(ScorerSettings(kind="label", labels=list(INTENTS)))
