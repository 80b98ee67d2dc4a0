"""``lethe bench service``: the service's own benchmark, driving running stacks over HTTP.

No engine code: the stacks run in subprocesses as an operator runs them (``stack``), clients
load them (``load``), each figure is one function (``measures``, ``audit_scale``), beside a
minimal app as the floor (``floor``), and ``report`` writes results.json and results.md.
"""
