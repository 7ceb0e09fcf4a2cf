"""Alertmanager payload parsing, the watcher's hysteresis and cooldown (explicit clock), cron schedule."""
from dataclasses import dataclass

import pytest

from redistill.schedule import CronSchedule, ScheduleError
from redistill.settings import WatcherSettings
from redistill.watcher import AgreementWatcher
from redistill.webhook import WebhookError, parse_alertmanager

# What Alertmanager 0.25 POSTs (webhook_config, version 4), two alerts in one group.
PAYLOAD = {
    "receiver": "distillgate", "status": "firing", "version": "4",
    "groupKey": '{}:{alertname="StudentAgreementLow"}', "truncatedAlerts": 0,
    "groupLabels": {"alertname": "StudentAgreementLow"},
    "commonLabels": {"alertname": "StudentAgreementLow", "severity": "warning"},
    "commonAnnotations": {}, "externalURL": "http://am:9093",
    "alerts": [
        {"status": "firing", "labels": {"alertname": "StudentAgreementLow", "model": "intent", "severity": "warning"},
         "annotations": {"summary": "agreement 0.62 below 0.8", "value": "0.62"},
         "startsAt": "2026-11-25T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
         "generatorURL": "http://prom/graph", "fingerprint": "a1"},
        {"status": "resolved", "labels": {"alertname": "StudentAgreementLow", "model": "other"},
         "annotations": {}, "startsAt": "2026-11-25T09:00:00Z", "endsAt": "2026-11-25T09:30:00Z", "fingerprint": "b2"},
        {"status": "firing", "labels": {"alertname": "DiskFull", "model": "intent"}, "annotations": {}},
        {"status": "firing", "labels": {"alertname": "InputDriftHigh"}, "annotations": {}},
    ],
}


def test_alertmanager_payload_yields_one_trigger_per_firing_model():
    trig = parse_alertmanager(PAYLOAD, ["StudentAgreementLow", "InputDriftHigh"], now=5.0)
    assert len(trig) == 1
    t = trig[0]
    assert (t.source, t.model, t.created_at, t.metrics) == ("alertmanager", "intent", 5.0, {"value": 0.62})
    assert "StudentAgreementLow" in t.reason and "0.62" in t.reason


@pytest.mark.parametrize("body,msg", [
    ([], "JSON object"), ({"version": "3", "alerts": []}, "version"), ({"version": "4"}, "alerts"),
    ({"alerts": [1]}, r"alerts\[0\]"),
])
def test_malformed_payloads_are_clear_errors(body, msg):
    with pytest.raises(WebhookError, match=msg):
        parse_alertmanager(body, ["StudentAgreementLow"], now=0.0)


@dataclass
class Snap:
    n: int
    ratio: float | None
    lower: float | None


def _watcher(values):
    cfg = WatcherSettings(threshold=0.8, for_s=60, recover_margin=0.05, min_samples=30, cooldown_s=600)
    return AgreementWatcher(cfg, ["intent"], lambda model: values["snap"])


def test_watcher_needs_duration_and_samples_then_fires_once():
    v = {"snap": Snap(10, 0.5, 0.3)}
    w = _watcher(v)
    assert w.check(0) == [] and w.check(100) == []  # too few samples
    v["snap"] = Snap(50, 0.7, 0.6)
    assert w.check(100) == []  # below since 100
    assert w.check(159) == []
    fired = w.check(160)
    assert [t.model for t in fired] == ["intent"] and fired[0].metrics["lower"] == 0.6
    assert w.check(161) == [] and w.check(10_000) == []  # disarmed: no refire while still low


def test_watcher_hysteresis_and_cooldown():
    v = {"snap": Snap(50, 0.7, 0.6)}
    w = _watcher(v)
    w.check(0)
    assert w.check(60)  # fires
    v["snap"] = Snap(50, 0.84, 0.82)  # above threshold but within the margin: stays disarmed
    w.check(100)
    v["snap"] = Snap(50, 0.7, 0.6)
    w.check(200)
    assert w.check(400) == []
    v["snap"] = Snap(50, 0.9, 0.86)  # recovered past threshold + margin: re-armed
    w.check(450)
    v["snap"] = Snap(50, 0.7, 0.6)
    w.check(500)
    assert w.check(580) == []  # low for 80 s, but the cooldown (600 s since 60) holds
    assert w.check(660)  # cooldown over
    # a brief dip shorter than for_s never fires
    w2 = _watcher(v)
    w2.check(0)
    v["snap"] = Snap(50, 0.9, 0.85)
    w2.check(30)
    v["snap"] = Snap(50, 0.7, 0.6)
    w2.check(40)
    assert w2.check(90) == []


def test_cron_schedule_fires_per_slot_and_skips_missed_ones():
    s = CronSchedule("0 * * * *", ["intent", "other"], start=0.0)  # hourly
    assert s.next_at == 3600.0
    assert s.due(3599.0) == []
    fired = s.due(3600.0)
    assert [t.model for t in fired] == ["intent", "other"] and fired[0].source == "schedule"
    assert s.due(3601.0) == []
    assert len(s.due(5 * 3600 + 10)) == 2 and s.next_at == 6 * 3600.0  # missed slots collapse into one run
    with pytest.raises(ScheduleError):
        CronSchedule("every day", ["intent"], start=0.0)
