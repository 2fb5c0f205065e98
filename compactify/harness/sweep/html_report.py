"""report.html: the frontier plot and the table in one self-contained page.

Everything is inside the file (the PNG as a data: URI, the style in the head), so it opens from
a disk, an e-mail or a CI artifact with no network and nothing beside it.
"""

from __future__ import annotations

import base64
import html
from typing import Any, Sequence

from compactify.harness.sweep.tables import columns, recommendation_lines, table_rows

HEADER_COLOR = "#1f4e79"  # the table header; also what the browser test looks for in the screenshot
RECOMMENDED_ROW = "#fff2b3"
FRONTIER_ROW = "#fde2e2"

STYLE = f"""
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 22px; margin-bottom: 4px; }}
.meta {{ font-size: 13px; color: #444; }}
img.frontier {{ display: block; max-width: 100%; margin: 16px 0; border: 1px solid #ddd; }}
table {{ border-collapse: collapse; font-size: 12px; }}
th {{ background: {HEADER_COLOR}; color: #fff; padding: 6px 8px; text-align: left; }}
td {{ border-bottom: 1px solid #ddd; padding: 4px 8px; }}
tr.recommended td {{ background: {RECOMMENDED_ROW}; font-weight: bold; }}
tr.frontier td {{ background: {FRONTIER_ROW}; }}
tr.failed td {{ color: #a00; }}
"""


def sweep_html(summary: dict[str, Any], points: Sequence[dict[str, Any]], png: bytes) -> str:
    e = html.escape
    batches = summary["batches"]
    cols = columns(batches, summary["labels"])
    body_rows = []
    for p, row in zip(points, table_rows(points, batches)):
        cls = "failed" if p["status"] != "ok" else "recommended" if p.get("recommended") else \
            "frontier" if p.get("frontier") else ""
        cells = "".join(f"<td>{e(str(row.get(k, '')))}</td>" for k, _ in cols)
        body_rows.append(f'<tr class="{cls}">{cells}</tr>')
    recs = "".join(f"<li>{e(line)}</li>" for line in recommendation_lines(summary))
    warnings = "".join(f"<li>{e(w)}</li>" for w in summary.get("warnings") or [])
    image = base64.b64encode(png).decode("ascii")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>compactify sweep</title><style>{STYLE}</style></head>
<body>
<h1>compactify sweep: accuracy against latency</h1>
<p class="meta">{e(', '.join(summary['checkpoints']))}; budgets {e(', '.join(summary['budgets']))};
judged on {e(summary['data'])} ({e(summary['quality_name'])});
latency on {e(summary['runtime'])}, {summary['threads']} thread(s), all points timed interleaved in one process
({e(summary.get('machine_summary') or 'no point was timed')}).</p>
<h2>Recommended: at most {summary['max_accuracy_drop']:g} points lost</h2>
<ul>{recs}</ul>
<img class="frontier" alt="accuracy against latency, with the Pareto frontier" src="data:image/png;base64,{image}">
<table>
<thead><tr>{''.join(f'<th>{e(h)}</th>' for _, h in cols)}</tr></thead>
<tbody>
{chr(10).join(body_rows)}
</tbody>
</table>
{f'<h2>Warnings</h2><ul>{warnings}</ul>' if warnings else ''}
</body></html>
"""
