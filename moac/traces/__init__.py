"""The trace stage: what a run recorded, as JSON lines, and summaries of it.

Takes the records the run stage fills in (:mod:`.trace`: call, query, run, route and quality
lines, and their writer); gives files of them and, read back, their summaries
(:mod:`.summarize`). Imports nothing of moac: every stage may write or read a trace.
"""
