"""Pieces of ``benchmarks/generation.py``: one workload measured through four ways of serving it.

Split by what each piece depends on: ``workload`` (prompts and arrivals),
``timing`` (per-request timestamps into the reported figures), ``inprocess``
(transformers in this process: phases a, b, c), ``served`` (pipeserve over
gRPC: phase d), ``report`` (machine, tables, files) and ``tracker``
(progress on the terminal).
"""
