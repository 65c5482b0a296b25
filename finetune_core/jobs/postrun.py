"""Steps the job manager runs after training: evaluate the run, then write its report.

Each hook takes ``(workspace, run_id)``; the job manager logs its ``__name__`` and
records a failure on the run without losing the trained model.
"""

from __future__ import annotations

from finetune_core.evaluation.evaluate import evaluate_run
from finetune_core.reporting.report import build_report
from finetune_core.runs import RunFolder
from finetune_core.store import Workspace


def evaluation(workspace: Workspace, run_id: str) -> None:
    """Write eval.json and predictions.csv for a run that saved a model."""

    run = RunFolder(workspace.run_dir(run_id))
    if run.has_checkpoint():
        evaluate_run(run, workspace=workspace, cache_dir=workspace.cache_dir)


def report(workspace: Workspace, run_id: str) -> None:
    """Write report.html for a run that was evaluated."""

    run = RunFolder(workspace.run_dir(run_id))
    if run.evaluation() is not None:
        build_report(run, workspace)


DEFAULT_HOOKS = (evaluation, report)
