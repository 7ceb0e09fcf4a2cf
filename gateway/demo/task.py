"""The demo task: support-ticket intent classification, with a drift knob.

Tickets are generated from templates x vocabulary x paraphrase noise with a seeded RNG. ``drift`` is
the probability that a ticket comes from the AFTER world -- a new product line (smart-home devices and
their subscription), new phrasing for every intent, and a different label mix -- which the original
student never saw. Each intent is carried by cue words that belong to that intent only (``CUES``), so
the teacher stand-in can answer every ticket correctly however the noise rearranges it.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

Phase = Literal["before", "after"]

LABELS: tuple[str, ...] = ("billing", "refund", "shipping", "account", "technical", "cancel")
SYSTEM_PROMPT = (
    "You route customer support tickets. Reply with exactly one intent label and nothing else: "
    + ", ".join(LABELS)
    + "."
)
# For the evaluator's label scorer (ScorerSettings.label_pattern): the first word of the answer.
LABEL_PATTERN = r"^\s*([a-z]+)"
SLICE_HEADER = "x-product-line"
PRODUCT_LINES: dict[Phase, str] = {"before": "retail", "after": "smart-home"}

# Label mix: the after world has far more technical and cancellation tickets.
LABEL_MIX: dict[Phase, dict[str, float]] = {
    "before": {"billing": 0.22, "refund": 0.18, "shipping": 0.28, "account": 0.14, "technical": 0.10, "cancel": 0.08},
    "after": {"billing": 0.12, "refund": 0.08, "shipping": 0.05, "account": 0.15, "technical": 0.35, "cancel": 0.25},
}

# What the customer talks about. Never contains a cue word.
PRODUCTS: dict[Phase, tuple[str, ...]] = {
    "before": ("order", "parcel", "package", "jacket", "sneakers", "backpack", "coffee mug", "desk lamp"),
    "after": ("smart thermostat", "EV wallbox", "doorbell cam", "HomeHub plan", "sensor kit", "air purifier"),
}

# Intent phrases per phase; {p} is a product. Each contains at least one cue word of its label only.
CORES: dict[Phase, dict[str, tuple[str, ...]]] = {
    "before": {
        "billing": (
            "I was charged twice for my {p}",
            "the invoice for my {p} shows the wrong amount",
            "my card was billed for a {p} I never bought",
            "why is there an extra fee on the invoice for my {p}",
        ),
        "refund": (
            "I want a refund for my {p}",
            "please give me my money back for the {p}",
            "I returned the {p} but the refund never came",
            "when will you reimburse me for the {p}",
        ),
        "shipping": (
            "my {p} has not been delivered yet",
            "the tracking for my {p} has not moved in days",
            "where is my {p}, the courier never showed up",
            "the delivery of my {p} is late",
        ),
        "account": (
            "I cannot log in to my account",
            "please reset my password, I am locked out",
            "how do I change the email address on my account",
            "my login stopped working after I ordered the {p}",
        ),
        "technical": (
            "the website crashes when I try to view my {p}",
            "your checkout page shows an error when I pay for the {p}",
            "the app is broken and will not load my {p}",
            "I get an error message on the {p} page",
        ),
        "cancel": (
            "please cancel my {p} before it ships",
            "I want to cancel the order for the {p}",
            "cancel my {p}, I changed my mind",
            "stop the {p} order, cancel it please",
        ),
    },
    "after": {
        "billing": (
            "the monthly statement for my {p} has a surcharge I did not agree to",
            "my {p} plan got auto-renewed at the premium tier and I was overcharged",
            "there is a double debit for the {p} subscription",
            "the kWh pricing on my {p} statement looks wrong",
        ),
        "refund": (
            "I sent the {p} back under the 30-day guarantee, credit it to my card",
            "the {p} was faulty, I need a reimbursement",
            "compensate me for the {p} outage, I want a credit back",
            "please credit back what I paid for the {p}",
        ),
        "shipping": (
            "the installer van with my {p} never arrived",
            "my {p} is stuck at the depot according to the dispatch notice",
            "dispatch of the {p} keeps getting postponed",
        ),
        "account": (
            "my household profile lost access to the {p}",
            "two-factor codes for the {p} never arrive so I am locked out",
            "add my partner as a member of the {p} household",
            "I need to transfer ownership of the {p} to a new profile",
        ),
        "technical": (
            "the {p} firmware update failed and it keeps rebooting",
            "my {p} will not pair over bluetooth",
            "the {p} goes offline every night and drops wifi",
            "after the firmware update the {p} shows a red blinking light",
            "the {p} sensor reads 5 degrees too high, calibration seems off",
        ),
        "cancel": (
            "terminate my {p} plan at the end of this cycle",
            "I want to quit the {p} subscription",
            "how do I unsubscribe from the {p} plan",
            "do not renew my {p} plan, terminate it",
        ),
    },
}

# The teacher's knowledge: words that only ever carry one intent (lower case, stems where useful).
CUES: dict[str, tuple[str, ...]] = {
    "billing": ("charged", "invoice", "billed", "fee", "statement", "surcharge", "overcharged", "debit", "pricing"),
    "refund": ("refund", "money back", "reimburse", "reimbursement", "guarantee", "credit", "compensate"),
    "shipping": ("delivered", "tracking", "courier", "delivery", "installer", "depot", "dispatch"),
    "account": ("log in", "login", "password", "locked out", "two-factor", "email", "household", "profile", "ownership"),
    "technical": ("crashes", "error", "broken", "firmware", "pair", "bluetooth", "offline", "wifi", "blinking", "calibration"),
    "cancel": ("cancel", "terminate", "unsubscribe", "quit", "not renew"),
}

OPENERS: dict[Phase, tuple[str, ...]] = {
    "before": ("", "Hello, ", "Hi there, ", "Good morning, ", "Dear support, "),
    "after": ("", "hey team, ", "Yo, ", "Hiya! ", "Quick one: "),
}
CLOSERS: dict[Phase, tuple[str, ...]] = {
    "before": ("", ".", ". Thanks.", ". Thank you!", ". Regards, Sam", "?", ". Please help."),
    "after": ("", " asap", " pls", " ty!!", " - sent from my phone", " :(", " thx"),
}
FILLERS = ("honestly", "again", "really", "today", "still", "btw", "now")


@dataclass(frozen=True, slots=True)
class Ticket:
    text: str
    label: str
    phase: Phase

    @property
    def product_line(self) -> str:
        return PRODUCT_LINES[self.phase]

    def messages(self) -> list[dict[str, str]]:
        """The chat messages a client sends to the gateway for this ticket."""
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": self.text}]

    def request(self, model: str, *, max_tokens: int = 4) -> dict:
        """A complete /v1/chat/completions body (greedy, short: the answer is one label)."""
        return {"model": model, "messages": self.messages(), "max_tokens": max_tokens, "temperature": 0.0}

    def headers(self) -> dict[str, str]:
        """Headers that put the request in its product-line slice."""
        return {SLICE_HEADER: self.product_line}


def _typo(word: str, rng: random.Random) -> str:
    """Swap two neighbouring letters (cue words keep their first four letters' order)."""
    if len(word) < 6 or not word.isalpha():
        return word
    i = rng.randrange(4, len(word) - 1)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


class TicketGenerator:
    """Seeded ticket stream. ``drift`` in [0, 1] is the share of tickets from the after world."""

    def __init__(self, seed: int = 0, *, drift: float = 0.0, noise: float = 0.3) -> None:
        if not 0.0 <= drift <= 1.0:
            raise ValueError(f"drift must be within [0, 1], got {drift}")
        self.rng = random.Random(seed)
        self.drift = drift
        self.noise = noise

    def ticket(self, phase: Phase | None = None) -> Ticket:
        rng = self.rng
        if phase is None:
            phase = "after" if rng.random() < self.drift else "before"
        mix = LABEL_MIX[phase]
        label = rng.choices(list(mix), weights=list(mix.values()))[0]
        core = rng.choice(CORES[phase][label]).format(p=rng.choice(PRODUCTS[phase]))
        text = rng.choice(OPENERS[phase]) + core + rng.choice(CLOSERS[phase])
        return Ticket(self._noisy(text), label, phase)

    def _noisy(self, text: str) -> str:
        rng = self.rng
        words = text.split(" ")
        if rng.random() < self.noise:
            j = rng.randrange(len(words))
            words[j] = _typo(words[j], rng)
        if rng.random() < self.noise:
            words.insert(rng.randrange(len(words) + 1), rng.choice(FILLERS))
        text = " ".join(w for w in words if w)
        if rng.random() < self.noise / 2:
            text = text.lower()
        if rng.random() < self.noise / 3:
            text = text.upper()
        return text[0].upper() + text[1:] if text else text

    def tickets(self, n: int, phase: Phase | None = None) -> list[Ticket]:
        return [self.ticket(phase) for _ in range(n)]

    def __iter__(self) -> Iterator[Ticket]:
        while True:
            yield self.ticket()


def chat_text(ticket: Ticket, answer: str | None = None) -> str:
    """The rendered conversation, in the tiny student's chat format (for tokenizer training)."""
    text = f"<|system|>{SYSTEM_PROMPT}</s><|user|>{ticket.text}</s><|assistant|>"
    return text + (f"{answer}</s>" if answer is not None else "")


def tokenizer_corpus(n: int = 3000, *, seed: int = 1234, include_after: bool = False) -> list[str]:
    """Texts to train the student's tokenizer on: pre-drift tickets with their labels (and, if asked,
    after-world tickets too -- a "general-purpose" tokenizer that already knows the new words)."""
    gen = TicketGenerator(seed, drift=0.5 if include_after else 0.0)
    texts = [SYSTEM_PROMPT, *LABELS]
    texts += [ticket.text for ticket in gen.tickets(n)]
    texts += [label for label in LABELS for _ in range(50)]
    return texts
