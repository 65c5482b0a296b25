"""The standalone HTML report of one run: one file that opens offline, e.g. from an e-mail.

``report_data`` gathers what the report shows, ``report_view`` turns it into the
variables of ``templates/report.html.j2``, and this module renders that template
(autoescaping on, so every user string is escaped) and writes the file. plotly.js and
the CSS are inlined, figures travel as JSON, thumbnails as base64 data URIs; nothing
is fetched from the network.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2
from markupsafe import Markup
from plotly.offline import get_plotlyjs

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
    "build_report",
    "collect_report_data",
    "make_thumbnail",
    "misclassified_gallery",
    "render_report",
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


@lru_cache(maxsize=1)
def _plotly_js() -> Markup:
    # plotly's own bundle, trusted as code; only a literal "</script" could end its element.
    return Markup(get_plotlyjs().replace("</script", "<\\/script"))
