"""GenPRM for axolotl: the ``genprm_train.prompt_strategy`` dataset type, ``GenPRMPlugin``
(``plugins: [genprm_train.GenPRMPlugin]``) and ``genprm-train-report``.

The plugin is imported on first use: importing axolotl takes seconds, which
``genprm-train-report`` (also in this package) does not need.
"""

from .args import GenPRMArgs as GenPRMArgs


def __getattr__(name: str):
    if name == "GenPRMPlugin":  # axolotl resolves the YAML's plugin name with getattr
        from .plugin import GenPRMPlugin

        return GenPRMPlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
