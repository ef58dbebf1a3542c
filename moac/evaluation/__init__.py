"""The evaluation stage: ``moac eval``, ``moac calibrate`` and recorded answers replayed.

Takes pipelines, prompt sets and judges; gives judged answers, statistics and reports
(:mod:`.evaluate`, :mod:`.judging`, :mod:`.verdicts`, :mod:`.stats`, :mod:`.report`), catalogs
refitted from traces (:mod:`.calibrate`, :mod:`.calibrate_render`) and a server replaying
recorded answers (:mod:`.replay`). May import every stage below the command line.
"""
