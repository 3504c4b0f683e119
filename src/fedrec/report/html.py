"""``fedrec report``: one self-contained HTML page comparing finished runs.

Everything is inline (CSS in a ``<style>``, figures as base64 PNG ``data:`` URIs) and nothing
is fetched, so the file can be mailed and opened offline. PNG rather than inline SVG: an SVG
carries its ``http://www.w3.org`` namespace, and the page must hold no web address at all.

The best row is the one best on the configured validation monitor (``train.monitor``), never on
test: a report must not invite choosing runs by their test figures.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no screen on servers and CI; must precede pyplot

import matplotlib.pyplot as plt
import pandas as pd

from fedrec.config import flatten
from fedrec.eval.metrics import LOWER_IS_BETTER
from fedrec.utils.atomic import atomic_write_text

CURVES = (
    ("loss", ("loss", "train_loss")),
    ("valid HR@10", ("valid/HR@10",)),
    ("valid NDCG@10", ("valid/NDCG@10",)),
    ("epsilon", ("epsilon",)),
)
BYTES = (("up per client", "bytes_up_per_client"), ("down per client", "bytes_down_per_client"))
PER_USER = ("HR@10", "NDCG@10", "RMSE")


class ReportError(ValueError):
    """A run directory that cannot be reported; the message names it."""


@dataclass
class Run:
    label: str
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    per_user: pd.DataFrame | None = None
    audit: dict[str, Any] | None = None

    @property
    def x_key(self) -> str:
        return "round" if self.summary.get("mode") == "federated" else "epoch"

    @property
    def monitor(self) -> str:
        return str(self.config.get("train", {}).get("monitor", "NDCG@10"))


def load_run(path: Path, label: str) -> Run:
    summary_file, config_file = path / "summary.json", path / "config.toml"
    if not summary_file.is_file() or not config_file.is_file():
        raise ReportError(f"{path} is not a finished run (needs summary.json and config.toml)")
    try:
        summary = json.loads(summary_file.read_text())
        config = tomllib.loads(config_file.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ReportError(f"{path}: unreadable summary or config: {exc}") from exc
    run = Run(label=label, path=path, config=config, summary=summary)
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        run.records = [json.loads(line) for line in metrics.read_text().splitlines() if line]
    if (path / "per_user_test.csv").is_file():
        run.per_user = pd.read_csv(path / "per_user_test.csv")
    if (path / "audit.json").is_file():
        run.audit = json.loads((path / "audit.json").read_text())
    return run


def _labels(paths: Sequence[Path]) -> list[str]:
    """Folder names, lengthened with their parents until they differ."""
    parts = [p.resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{p} ({i})" for i, p in enumerate(paths)]


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(float(v)) else None


def _fmt(v: Any) -> str:
    x = _num(v)
    if x is None:
        return html.escape("" if v is None else str(v))
    if isinstance(v, int):
        return f"{v:,}"
    return f"{x:.4f}" if abs(x) < 100 else f"{x:,.1f}"


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="figure" src="data:image/png;base64,{data}">'


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], classes: Sequence[str] = ()) -> str:
    out = ["<table><thead><tr>", *(f"<th>{html.escape(h)}</th>" for h in head), "</tr></thead>"]
    out.append("<tbody>")
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if i < len(classes) and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def configs_section(runs: Sequence[Run]) -> str:
    flat = [flatten(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f})
    differ = [k for k in keys if len({f.get(k, "—") for f in flat}) > 1]
    same = [k for k in keys if k not in differ]
    head = ["option", *(r.label for r in runs)]
    rows = [[html.escape(k), *(html.escape(f.get(k, "—")) for f in flat)] for k in differ]
    body = f"<p>{len(differ)} option(s) differ (highlighted); {len(same)} are the same.</p>" + (
        _table(head, rows, ["diff"] * len(rows)) if rows else ""
    )
    same_rows = [[html.escape(k), *(html.escape(f.get(k, "—")) for f in flat)] for k in same]
    body += (
        f"<details><summary>options that are the same</summary>{_table(head, same_rows)}</details>"
    )
    return f'<section id="configs"><h2>Configurations</h2>{body}</section>'


def _best_index(runs: Sequence[Run]) -> int | None:
    """The run best on validation (its own monitor; runs are compared on the first's)."""
    monitor = runs[0].monitor
    values = [_num((r.summary.get("valid") or {}).get(monitor)) for r in runs]
    present = [(v, i) for i, v in enumerate(values) if v is not None]
    if not present:
        return None
    pick = min if monitor in LOWER_IS_BETTER else max
    return pick(present)[1]


def metrics_section(runs: Sequence[Run]) -> str:
    def keys(section: str) -> list[str]:
        out: list[str] = []
        for r in runs:
            out += [k for k in (r.summary.get(section) or {}) if k not in out]
        return out

    cols = [("valid", k) for k in keys("valid")] + [("test", k) for k in keys("test")]
    best = _best_index(runs)
    head = ["run", "model", "mode", *(f"{s} {k}" for s, k in cols)]
    rows, classes = [], []
    for i, r in enumerate(runs):
        mark = " ★" if i == best else ""
        cells = [
            html.escape(r.label) + mark,
            html.escape(str(r.summary.get("model", ""))),
            html.escape(str(r.summary.get("mode", ""))),
        ]
        cells += [_fmt((r.summary.get(s) or {}).get(k)) for s, k in cols]
        rows.append(cells)
        classes.append("best" if i == best else "")
    note = (
        f"<p>★ best on validation {html.escape(runs[0].monitor)} (the selection metric); test "
        "figures are shown, never used to choose.</p>"
    )
    return f'<section id="metrics"><h2>Metrics</h2>{note}{_table(head, rows, classes)}</section>'


def _series(
    records: Sequence[dict[str, Any]], x_key: str, keys: Sequence[str]
) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for rec in records:
        for key in keys:
            y = _num(rec.get(key))
            if y is not None and x_key in rec:
                xs.append(float(rec[x_key]))
                ys.append(y)
                break
    return xs, ys


def _overlay(runs: Sequence[Run], panels: Sequence[tuple[str, tuple[str, ...]]]) -> str | None:
    drawn = [
        (title, [(r.label, *_series(r.records, r.x_key, keys), r.x_key) for r in runs])
        for title, keys in panels
    ]
    drawn = [(t, [s for s in series if s[1]]) for t, series in drawn]
    drawn = [(t, series) for t, series in drawn if series]
    if not drawn:
        return None
    fig, axes = plt.subplots(1, len(drawn), figsize=(4.6 * len(drawn), 3.4), squeeze=False)
    for ax, (title, series) in zip(axes[0], drawn, strict=True):
        for label, xs, ys, x_key in series:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
            ax.set_xlabel(x_key)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def curves_section(runs: Sequence[Run]) -> str:
    img = _overlay(runs, CURVES)
    body = img or "<p>No per-round or per-epoch records (metrics.jsonl) to draw.</p>"
    return f'<section id="curves"><h2>Learning curves</h2>{body}</section>'


def bytes_section(runs: Sequence[Run]) -> str:
    fed = [r for r in runs if r.summary.get("mode") == "federated"]
    if not fed:
        return '<section id="bytes"><h2>Communication</h2><p>No federated run.</p></section>'
    img = _overlay(fed, [(t, (k,)) for t, k in BYTES]) or ""
    head = [
        "run",
        "bytes up / client / round",
        "bytes down / client / round",
        "up total",
        "down total",
    ]
    rows = []
    for r in fed:
        b = r.summary.get("bytes") or {}
        rows.append(
            [
                html.escape(r.label),
                _fmt(b.get("up_per_client_round")),
                _fmt(b.get("down_per_client_round")),
                _fmt(b.get("up_total")),
                _fmt(b.get("down_total")),
            ]
        )
    return f'<section id="bytes"><h2>Communication</h2>{img}{_table(head, rows)}</section>'


def _audit_cells(audit: dict[str, Any] | None) -> list[str]:
    if not audit:
        return ["no audit.json", "", "", "", ""]
    can = audit.get("canary_audit") or {}
    inf = audit.get("item_inference") or {}
    mia = audit.get("membership_inference") or {}
    return [
        html.escape(str(can.get("adversary_view", audit.get("server_view", "")))),
        _fmt(can.get("auc")),
        _fmt(can.get("empirical_epsilon")),
        _fmt(inf.get("advantage_over_popularity_mean")),
        _fmt(mia.get("advantage")),
    ]


def privacy_section(runs: Sequence[Run]) -> str:
    head = [
        "run",
        "uploads",
        "ε",
        "δ",
        "mechanism / accountant",
        "audit: adversary saw",
        "canary AUC",
        "empirical ε (lower bound)",
        "item inference beyond popularity",
        "membership advantage",
    ]
    rows = []
    for r in runs:
        p = r.summary.get("privacy") or {}
        up = r.summary.get("uploads") or {}
        shields = [k for k in ("secure_aggregation", "homomorphic_encryption") if up.get(k)]
        shields += [f"{k}={up[k]}" for k in ("user_level_dp", "local_dp") if up.get(k)]
        if up.get("pseudo_items"):
            shields.append(f"pseudo_items={up['pseudo_items']}")
        uploads = html.escape(f"{up.get('form', '')} {', '.join(shields)}".strip()) or "—"
        mech = " / ".join(str(p[k]) for k in ("mechanism", "accountant") if p.get(k))
        rows.append(
            [
                html.escape(r.label),
                uploads,
                _fmt(p.get("epsilon")),
                _fmt(p.get("delta")),
                html.escape(mech),
                *_audit_cells(r.audit),
            ]
        )
    eps = _overlay(runs, [("epsilon per round", ("epsilon",))]) or ""
    note = "<p>ε is empty for runs without DP or LDP. AUC 0.5 is random guessing.</p>"
    return f'<section id="privacy"><h2>Privacy</h2>{note}{_table(head, rows)}{eps}</section>'


def per_user_section(runs: Sequence[Run]) -> str:
    have = [r for r in runs if r.per_user is not None]
    if not have:
        return (
            '<section id="per-user"><h2>Per-user test metrics</h2>'
            "<p>No per_user_test.csv.</p></section>"
        )
    metrics = [
        m for m in PER_USER if any(m in r.per_user.columns for r in have if r.per_user is not None)
    ]
    head = ["run", "metric", "users", "mean", "p10", "p25", "median", "p75", "share at 0"]
    rows: list[list[str]] = []
    fig, axes = plt.subplots(
        1, max(1, len(metrics)), figsize=(4.6 * max(1, len(metrics)), 3.4), squeeze=False
    )
    for ax, m in zip(axes[0], metrics, strict=False):
        data, labels = [], []
        for r in have:
            assert r.per_user is not None
            if m not in r.per_user.columns:
                continue
            col = r.per_user[m].dropna().astype(float)
            data.append(col.to_numpy())
            labels.append(r.label)
            q = col.quantile([0.1, 0.25, 0.5, 0.75])
            rows.append(
                [
                    html.escape(r.label),
                    m,
                    f"{len(col):,}",
                    _fmt(col.mean()),
                    *(_fmt(q[x]) for x in (0.1, 0.25, 0.5, 0.75)),
                    _fmt(float((col == 0).mean())),
                ]
            )
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=20, fontsize=7)
        ax.set_title(f"test {m} per user")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    note = "<p>Means hide who is served badly: the spread over users, and the share at zero.</p>"
    return (
        f'<section id="per-user"><h2>Per-user test metrics</h2>{note}{_png(fig)}'
        f"{_table(head, rows)}</section>"
    )


def machine_section(runs: Sequence[Run]) -> str:
    keys = (
        "cpu",
        "cores",
        "ram_gib",
        "torch",
        "torch_threads",
        "threads",
        "python",
        "platform",
        "machine",
        "load_average",
        "date",
    )
    head = ["run", *keys, "seconds"]
    rows = []
    for r in runs:
        m = {**(r.summary.get("environment") or {}), **(r.summary.get("machine") or {})}
        rows.append(
            [
                html.escape(r.label),
                *(
                    _fmt(m.get(k))
                    if not isinstance(m.get(k), list)
                    else html.escape(", ".join(f"{x:.2f}" for x in m[k]))
                    for k in keys
                ),
                _fmt(r.summary.get("seconds")),
            ]
        )
    note = "<p>Timings mean nothing without the machine and its load at the time.</p>"
    return f'<section id="machine"><h2>Machines</h2>{note}{_table(head, rows)}</section>'


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222}
h1{font-size:1.5em}
h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3}tr.diff td{background:#fff4c2}tr.best td{background:#dff3df;font-weight:600}
img{max-width:100%;display:block;margin:.5em 0}details{margin:.5em 0}
"""


def render(run_dirs: Sequence[Path]) -> str:
    """The report page for ``run_dirs`` as one HTML string."""
    if not run_dirs:
        raise ReportError("give at least one run directory")
    runs = [load_run(Path(p), label) for p, label in zip(run_dirs, _labels(run_dirs), strict=True)]
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    listing = "".join(f"<li>{html.escape(r.label)}: {html.escape(str(r.path))}</li>" for r in runs)
    sections = [
        configs_section(runs),
        metrics_section(runs),
        curves_section(runs),
        bytes_section(runs),
        privacy_section(runs),
        per_user_section(runs),
        machine_section(runs),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>fedrec report: {len(runs)} run(s)</title><style>{CSS}</style></head><body>"
        f"<h1>fedrec report: {len(runs)} run(s)</h1><p>Generated {when}.</p><ul>{listing}</ul>"
        + "".join(sections)
        + "</body></html>\n"
    )


def write_report(run_dirs: Sequence[Path], out: Path) -> Path:
    page = render(run_dirs)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, page)
    return out
