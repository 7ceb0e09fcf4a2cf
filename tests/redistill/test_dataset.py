"""Dataset building from in-memory shadow pairs: filters with reasons, dedup, split, oversampling, review."""
import asyncio

import orjson
import pytest

from evaluator.records import ExchangeRecord, ShadowPair
from redistill.dataset import BuildInputs, DatasetError, build_dataset, teacher_seed_records
from redistill.manifest import load_dataset
from redistill.review import ReviewError, import_review, write_review_file
from redistill.settings import DatasetSettings
from redistill.split import is_heldout

SYSTEM = {"role": "system", "content": "Classify the ticket intent."}


def _rec(rid, text, route, *, content, slice_="default", t=0.0, finish="stop", lps=None, tokens=None):
    req = {"model": "intent", "messages": [SYSTEM, {"role": "user", "content": content}], "temperature": 0, "max_tokens": 8}
    return ExchangeRecord(request_id=rid, model="intent", route=route, version="base" if route == "student" else "teacher",
                          endpoint="chat", request=req, response_text=text, finish_reason=finish, slice=slice_,
                          created_at=t, token_logprobs=lps, completion_tokens=tokens,
                          top_logprobs=({"billing": -0.1, "refund": -2.5},) if route == "teacher" else None)


def _pair(i, teacher_text, student_text, **kw):
    content = kw.pop("content", f"ticket number {i} about my order {i * 7919} arriving late")
    served = _rec(f"r{i}", student_text, "student", content=content, **kw)
    shadow = _rec(f"r{i}", teacher_text, "teacher", content=content, **kw)
    return ShadowPair(served=served, shadow=shadow, scores={"label": float(teacher_text == student_text)},
                      agreed=teacher_text == student_text)


def test_filters_dedup_labels_and_manifest(tmp_path):
    pairs = [_pair(i, "billing", "billing" if i % 3 else "refund", t=float(i)) for i in range(60)]
    pairs += [
        _pair(100, "I'm sorry, but I can't help with that", "billing"),
        _pair(101, "billing billing", "billing", finish="length"),
        _pair(102, "a " * 50, "billing", tokens=50),
        _pair(103, "not-a-label", "billing"),
        _pair(104, "billing", "x", lps=(-5.0, -6.0)),
        _pair(105, "billing", "billing", content="ticket number 1 about my order 7919 arriving late"),  # exact dup
    ]
    settings = DatasetSettings(max_completion_tokens=16, min_teacher_mean_logprob=-3.0, dedup="exact",
                               heldout_fraction=0.2, disagreement_oversample=3.0)
    inputs = BuildInputs(model="intent", pairs=pairs, labels={"r5": "refund"},
                         is_valid=lambda text: text.split()[0] in {"billing", "refund"})
    ds = build_dataset(inputs, settings, tmp_path, now=1000.0)
    m = ds.manifest
    assert m["filters"]["dropped"] == {"duplicate": 1, "invalid": 1, "low_confidence": 1, "over_long": 1,
                                       "refusal": 1, "truncated": 1}
    assert m["filters"]["kept"] == 60
    train, heldout = ds.train(), ds.heldout()
    # the split is by request hash and deterministic
    assert all(is_heldout(e.request_hash, 0.2) for e in heldout) and not any(is_heldout(e.request_hash, 0.2) for e in train)
    assert {e.request_hash for e in train}.isdisjoint({e.request_hash for e in heldout}) and heldout
    # the exact production request format is kept; feedback overrides the teacher's text
    ex = next(e for e in train + heldout if e.request_id == "r5")
    assert ex.target == "refund" and ex.target_source == "feedback" and ex.teacher_text == "billing"
    assert ex.request["messages"][0] == SYSTEM and ex.request["temperature"] == 0
    assert ex.top_logprobs == [{"billing": -0.1, "refund": -2.5}]
    # disagreements are oversampled 3x
    dis = [e for e in train if e.disagreement]
    assert dis and len(dis) == 3 * len({e.request_hash for e in dis})
    assert load_dataset(ds.directory).hash == ds.hash and len(ds.hash) == 64


def test_drifted_slice_oversampled_toward_recent_mix(tmp_path):
    # Old traffic is all "default"; the newest quarter is mostly the drifted "new" slice.
    pairs = [_pair(i, "billing", "billing", t=float(i)) for i in range(80)]
    pairs += [_pair(200 + i, "refund", "refund", t=1000.0 + i, slice_="new") for i in range(20)]
    ds = build_dataset(BuildInputs(model="intent", pairs=pairs, labels={}),
                       DatasetSettings(dedup="none", heldout_fraction=0.0), tmp_path)
    assert ds.manifest["oversample_factors"]["new"] > ds.manifest["oversample_factors"]["default"] == 1.0
    mix = ds.manifest["slice_mix_train"]
    assert mix["new"] > 0.2  # it was 0.2 of the raw pairs; oversampling moved it toward recent traffic


def test_minhash_drops_near_duplicates_and_previous_heldout_never_trained(tmp_path):
    base = "my parcel has not arrived and the tracking page shows no update since monday please help"
    pairs = [_pair(i, "billing", "billing", content=base + (" thanks" if i else "")) for i in range(2)]
    pairs += [_pair(10 + i, "billing", "billing") for i in range(40)]
    s = DatasetSettings(dedup="minhash", minhash_threshold=0.8, heldout_fraction=0.3)
    first = build_dataset(BuildInputs(model="intent", pairs=pairs, labels={}), s, tmp_path)
    assert first.manifest["filters"]["dropped"]["duplicate"] == 1
    # a second dataset with a larger held-out share still never trains on the first one's held-out prompts
    second = build_dataset(BuildInputs(model="intent", pairs=pairs, labels={}),
                           DatasetSettings(dedup="none", heldout_fraction=0.05), tmp_path)
    old_heldout = {e.request_hash for e in first.heldout()}
    assert old_heldout and old_heldout.isdisjoint({e.request_hash for e in second.train()})
    assert second.manifest["previous_datasets"] == [first.hash]


def test_no_examples_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no usable examples"):
        build_dataset(BuildInputs(model="intent", pairs=[_pair(1, "", "x")], labels={}), DatasetSettings(), tmp_path)


def test_seed_prompts_go_through_the_teacher(tmp_path):
    seed = tmp_path / "seed.jsonl"
    seed.write_text('{"messages": [{"role": "user", "content": "where is my refund"}]}\n\n')
    seen = []

    async def ask(body):
        seen.append(body)
        return _rec("seed-1", "refund", "teacher", content=body["messages"][0]["content"])

    recs = asyncio.run(teacher_seed_records(seed, "intent", ask))
    assert seen[0]["model"] == "intent" and recs[0].response_text == "refund"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nope": 1}\n')
    with pytest.raises(DatasetError, match="bad.jsonl:1"):
        asyncio.run(teacher_seed_records(bad, "intent", ask))


def test_review_sample_and_import(tmp_path):
    pairs = [_pair(i, "billing", "billing" if i % 2 else "refund", slice_="a" if i % 4 else "b") for i in range(40)]
    ds = build_dataset(BuildInputs(model="intent", pairs=pairs, labels={}), DatasetSettings(dedup="none"), tmp_path)
    out = tmp_path / "review.jsonl"
    assert write_review_file(ds, 8, out) == 8
    lines = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    # round-robin over strata: the small "b" stratum is represented
    assert {(line["slice"], line["disagreement"]) for line in lines} == {("a", True), ("a", False), ("b", True)}
    for i, line in enumerate(lines):
        line["review"] = "reject" if i < 2 else "accept"
    out.write_bytes(b"\n".join(orjson.dumps(x) for x in lines))
    reviewed = import_review(ds, out, tmp_path / "intent" / "reviewed")
    rejected = {lines[0]["request_hash"], lines[1]["request_hash"]}
    assert rejected.isdisjoint({e.request_hash for e in reviewed.train() + reviewed.heldout()})
    assert reviewed.manifest["review"]["reject_rate"] == pytest.approx(2 / 8)
    assert reviewed.manifest["parent_hash"] == ds.hash != reviewed.hash
    out.write_text('{"request_hash": "x", "review": "maybe"}\n')
    with pytest.raises(ReviewError):
        import_review(ds, out, tmp_path / "x")
