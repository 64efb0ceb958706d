"""Isolated, warm, fast execution of model-written Python.

>>> from genprm.sandbox import Sandbox
>>> with Sandbox(workers=1) as sandbox:
...     sandbox.run("import sympy; print(sympy.factor('x**2-1'))").stdout
'(x - 1)*(x + 1)\\n'
"""

from .errors import SandboxError
from .pool import Sandbox
from .result import STATUSES, ExecResult
from .session import Session
from .waits import MAX_TIMEOUT_S

__all__ = ["MAX_TIMEOUT_S", "STATUSES", "ExecResult", "Sandbox", "SandboxError", "Session"]
