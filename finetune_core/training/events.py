"""The loop's event bus: typed no-op hooks, and the one way to end training early.

``Trainer.fit`` runs phases x passes x batches and emits ``before_*``/``after_*`` for
``fit``, ``phase``, ``epoch`` (a training pass), ``pass`` (a non-training pass, e.g.
feature extraction) and ``batch``, plus ``on_setup`` (progress of a step before the loop:
downloading weights, decoding images), ``on_stop``, ``on_exception`` and ``on_log``.
Callbacks run in ``order`` (lowest first). Any callback may raise ``StopTraining``:
the loop ends cleanly after that event, keeps the best checkpoint and reports why.
"""

from __future__ import annotations

from typing import Any


class StopTraining(Exception):  # noqa: N818 - a control-flow signal, not an error
    """End the fit after the current event; ``reason`` is shown to the user."""

    def __init__(self, reason: str, *, requested: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.requested = requested  # by the user (STOPPED), not by a rule (SUCCEEDED)


class Callback:
    """Base class: override the hooks you need. ``trainer`` is the running Trainer."""

    order = 50
    # A callback with state (early stopping, the best value) names it here; the loop
    # saves ``state_dict()`` in every checkpoint under this key and restores it on resume.
    state_key: str | None = None

    def before_fit(self, trainer: Any) -> None: ...
    def after_fit(self, trainer: Any) -> None: ...
    def before_phase(self, trainer: Any) -> None: ...
    def after_phase(self, trainer: Any) -> None: ...
    def before_epoch(self, trainer: Any) -> None: ...
    def after_epoch(self, trainer: Any) -> None: ...
    def before_pass(self, trainer: Any) -> None: ...
    def after_pass(self, trainer: Any) -> None: ...
    def before_batch(self, trainer: Any) -> None: ...
    def after_batch(self, trainer: Any) -> None: ...
    def on_setup(self, trainer: Any, what: str, done: int, total: int) -> None: ...
    def on_stop(self, trainer: Any) -> None: ...
    def on_exception(self, trainer: Any, exc: BaseException) -> None: ...
    def on_log(self, trainer: Any, message: str) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
