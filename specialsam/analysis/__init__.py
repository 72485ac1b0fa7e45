"""Statistics and verdicts on sweep results, without plotting or file writing.

results (input types, verdict words) < stats (paired bootstrap) < selection (validation-chosen
configurations) < baseline_rule, data_rule < summaries (health, retention, breakdowns, recommendation).
Nothing here imports ``specialsam.report``; the report reads these results.
"""
