"""finetune_core: data, training, evaluation, reports and export for Finetune Dashboard.

This package never imports Streamlit; the app, the CLI and the tests all use it.
"""

__version__ = "0.1.0"
