"""What the tests share; only tests import it (the library never does).

- :mod:`.paths`: the repository and the shared data and specs beside it;
- :mod:`.processes`: what runs, seen from /proc (the sandbox tests' leftover checks, the
  process trees of commands that are killed);
- :mod:`.hostile`: hostile snippets that several sandbox tests run, and a host listener;
- :mod:`.judgements`: scripted verifier judgements with a chosen p(Yes), and the three-step
  solution the verifier tests score;
- :mod:`.proxy`: a TCP forwarder that can drop a live server's connections;
- :mod:`.eval_commands`: ``genprm-eval`` command lines against a local vLLM server.

The sandbox tests' checkers import :mod:`.processes` and :mod:`.hostile` on the system Python
as another user: they import only the standard library and genprm.
"""
