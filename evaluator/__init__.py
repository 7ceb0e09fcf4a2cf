"""Shadow comparison, agreement scoring, drift detection, the pair store and reports.

Never imports the gateway: the gateway hands plain records (:mod:`evaluator.records`) in.
"""
