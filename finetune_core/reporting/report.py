"""The standalone HTML report of one run: one file that opens offline, e.g. from an e-mail.

``report_data`` gathers what the report shows, ``report_view`` turns it into the
variables of ``templates/report.html.j2``, and this module renders that template
(autoescaping on, so every user string is escaped) and writes the file. plotly.js and
the CSS are inlined, figures travel as JSON, thumbnails as base64 data URIs; nothing
is fetched from the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
from markupsafe import Markup
from plotly.offline import get_plotlyjs

from finetune_core.export import FORMAT_TITLES, FORMATS, BundlePaths
from finetune_core.fsutil import atomic_write_text
from finetune_core.reporting.report_data import (
    GALLERY_LIMIT,
    ReportData,
    collect_report_data,
    make_thumbnail,
    misclassified_gallery,
)
from finetune_core.reporting.report_view import report_context

if TYPE_CHECKING:  # rendering stays free of torch; only build_report reads run folders
    from finetune_core.runs import RunFolder
    from finetune_core.store import Workspace

__all__ = [
    "GALLERY_LIMIT",
    "ReportData",
    "ReportState",
    "build_report",
    "collect_report_data",
    "make_thumbnail",
    "misclassified_gallery",
    "refresh_report",
    "render_report",
    "report_state",
    "template_environment",
    "write_report",
]

TEMPLATE = "report.html.j2"


@lru_cache(maxsize=1)
def template_environment() -> jinja2.Environment:
    """The report's templates, read from the installed package (package data)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("finetune_core.reporting", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "j2"), default=True),
        undefined=jinja2.StrictUndefined,  # a misspelt variable fails loudly, never renders empty
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_report(data: ReportData) -> str:
    """The complete, self-contained HTML document for ``data``."""
    template = template_environment().get_template(TEMPLATE)
    return template.render(**report_context(data), plotly_js=_plotly_js())


def write_report(data: ReportData, path: Path) -> Path:
    """Render ``data`` and write it atomically to ``path``; returns the path."""
    path = Path(path)
    atomic_write_text(path, render_report(data))
    return path


def build_report(run: RunFolder, workspace: Workspace | str | Path | None = None) -> Path:
    """Assemble everything known about ``run`` and write its report atomically.

    Works for dashboard runs and for CLI run folders anywhere; missing pieces (no
    evaluation, dataset deleted) leave their sections empty, never fail.
    """
    return write_report(collect_report_data(run, workspace), run.paths.report)


@dataclass(frozen=True)
class ReportState:
    """When a run's report.html was written and what it shows has changed since."""

    built_at: datetime | None  # None: there is no report yet
    changed: tuple[str, ...]  # e.g. ("the evaluation", "the ONNX export")

    @property
    def stale(self) -> bool:
        return self.built_at is None or bool(self.changed)


def report_inputs(run: RunFolder) -> dict[str, Path]:
    """The files whose content the report shows after training: what, and where."""
    inputs = {
        "the evaluation": run.paths.evaluation,
        "the predictions": run.paths.predictions,
    }
    for fmt in FORMATS:
        inputs[f"the {FORMAT_TITLES[fmt]} export"] = BundlePaths(
            run.paths.export_bundle(fmt)
        ).verification
    return inputs


def report_state(run: RunFolder) -> ReportState:
    """How current the run's report is: newer inputs than the report make it stale."""
    try:
        built = run.paths.report.stat().st_mtime
    except OSError:
        return ReportState(None, ())
    changed = []
    for what, path in report_inputs(run).items():
        try:
            if path.stat().st_mtime > built:
                changed.append(what)
        except OSError:
            continue
    return ReportState(datetime.fromtimestamp(built, timezone.utc), tuple(changed))


def refresh_report(run: RunFolder, workspace: Workspace | str | Path | None = None) -> Path | None:
    """Rebuild the report when it is missing or stale (only for an evaluated run);
    returns its path, or None when the run has no evaluation to report."""
    if run.evaluation() is None:
        return None
    if report_state(run).stale:
        return build_report(run, workspace)
    return run.paths.report


@lru_cache(maxsize=1)
def _plotly_js() -> Markup:
    # plotly's own bundle, trusted as code; only a literal "</script" could end its element.
    return Markup(get_plotlyjs().replace("</script", "<\\/script"))
