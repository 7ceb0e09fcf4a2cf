"""A job process that records its verdict and then does not exit (a stuck atexit hook, a non-daemon thread):
run by a LocalRunner in place of `gateway.cli`, with the same arguments."""
from __future__ import annotations

import argparse
import time

from evaluator.store.engine import create_store_engine
from gateway.config import load_config
from redistill.jobs import JobStore

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("command")
    parser.add_argument("--model", required=True)
    parser.add_argument("--job-id", required=True)
    args = parser.parse_args()
    config = load_config(args.config, environ={})
    JobStore(create_store_engine(config.evaluator.store.url)).update(args.job_id, "rejected")
    print("verdict recorded; lingering", flush=True)
    time.sleep(600)
