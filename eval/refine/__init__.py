"""``genprm-eval refine``: critique-refine (spec §7; paper §5.4, upstream
``src/prm_evaluation/policy_refine.py``).

    genprm-eval refine --engine openai --base-url http://node1:8000/v1 \\
        --policy-base-url http://node2:8000/v1 --input ../shared/data/math500/test.jsonl \\
        --out runs/refine
    genprm-eval refine --samples runs/bon/samples.jsonl --out runs/refine   # given solutions
    genprm-eval refine --engine vllm --model GenPRM/GenPRM-7B --executor ray --out runs/refine

The verifier (the engine flags, as for ``processbench``) scores each policy solution; the first
step it rejects (reward < 0.5) goes back to the policy with the verifier's critique of it, in
upstream's wording; the policy's new answer is split into paragraphs, scored again, and refined
again while a step is rejected, for at most ``--turns`` (3) turns. A solution with no rejected
step stands as it is. Each turn's conversation is the four §7 messages built afresh from the
current solution (not the previous turn's conversation continued).

Accuracy at turn k counts every problem's *current* solution after turn k: the one refined at
turn k where it was sent back, else the last one it had (a solution the verifier accepted, or
one that could not be scored, stands unchanged). Turn 0 is the policy's first solution.

Outputs in ``--out``: ``refine.jsonl`` (one line per problem, appended as problems finish; a
rerun skips them), ``metrics.json``, ``report.md``, ``accuracy_per_turn.png``, ``settings.json``.

The modules: :mod:`.prompts` (the §7 messages and the policy's sampling), :mod:`.turns` (one
problem's turns, many problems in flight), :mod:`.results` (``refine.jsonl`` and resuming),
:mod:`.samples` (given first solutions), :mod:`.report` (metrics per turn, report and plot) and
:mod:`.cli` (the command, on this process or on Ray actors).
"""
