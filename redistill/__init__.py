"""The re-distillation loop: trigger, dataset, distill, gate, promote, roll back.

Imports evaluator.store (to read pairs); never the gateway. Training never runs in the gateway process.
"""
