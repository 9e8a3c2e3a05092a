"""The one-file HTML report: verdict first, then the tables, curves, data statistics and params.

Self-contained: inline CSS and inline SVG plots (matplotlib renders text as paths), no scripts, no fonts,
no network -- it opens from a laptop, a CI artifact or an email attachment alike.
"""

from __future__ import annotations

import html
import io

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.hashsalt"] = "dapt"  # stable element ids: the same results give the same file
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"base": "#1f77b4", "adapted": "#d62728", "train": "#d62728", "held-out": "#2ca02c"}
CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1000px;margin:2em auto;
  padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.verdict{font-size:1.15em;padding:.8em 1em;background:#f0f6ff;border-left:4px solid #1f77b4}
.warn{padding:.6em 1em;background:#fff6e0;border-left:4px solid #e0a000}
.better{color:#137333;font-weight:600}.worse{color:#b3261e;font-weight:600}
pre{background:#f7f7f7;padding:.8em;white-space:pre-wrap;font-size:13px}.plots{display:flex;flex-wrap:wrap;gap:1em}
"""


def svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def curves_figure(title: str, series: dict[str, dict[str, list]], ylabel: str = "loss") -> str:
    """series: model -> {"seeds": [[(step, value), ...], ...], "mean": [(step, value), ...]}.
    Each seed is drawn faint, the mean bold, base and adapted overlaid."""
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    for model, s in series.items():
        color = COLORS.get(model, "#555")
        for run in s.get("seeds", []):
            if run:
                ax.plot(*zip(*run), color=color, alpha=0.25, linewidth=1)
        if s.get("mean"):
            ax.plot(*zip(*s["mean"]), color=color, linewidth=2.2, label=model)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return svg(fig)


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def fmt(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) >= 1000 else f"{x:.{digits}f}"
    return html.escape(str(x))


def verdict_cell(v: str) -> str:
    cls = v if v in ("better", "worse") else ""
    return f'<span class="{cls}">{html.escape(v)}</span>'


def render(compare: dict, figures: dict[str, str], params_yaml: str) -> str:
    mlm, down = compare["mlm"], compare["downstream"]
    parts = ["<h1>Domain-adaptive pretraining: base vs adapted</h1>",
             f'<p class="verdict">{html.escape(compare["headline"])}</p>']
    if mlm["base_head_untrained"]:
        parts.append('<p class="warn"><b>Caution:</b> the base model has no MLM head; the head used to score it '
                     "was freshly initialised and never trained, so the base model's MLM figures measure an "
                     "untrained head, not its encoder. Compare the MLM numbers with that in mind; the downstream "
                     "comparison is not affected (it uses the encoder only).</p>")
    rows = []
    for metric in ("loss", "perplexity", "top1_accuracy", "top10_accuracy"):
        rows.append([metric, fmt(mlm["base"][metric]), fmt(mlm["adapted"][metric])])
    d = mlm["paired_loss"]
    parts += ["<h2>Held-out masked-LM</h2>",
              f"<p>{mlm['base']['masked_tokens']} masked tokens on {mlm['lines']} held-out lines, identical masks for "
              "both models.</p>",
              table(["metric", "base", "adapted"], rows),
              f"<p>Per-line loss, adapted − base: mean {fmt(d['mean'])}"
              + (f", 95% CI [{fmt(d['ci95'][0])}, {fmt(d['ci95'][1])}]" if d["ci95"] else "")
              + f" over {d['n']} lines → {verdict_cell(d['verdict'])}.</p>"]
    rows = []
    for metric, m in down["metrics"].items():
        diff = m["difference"]
        ci = f"[{fmt(diff['ci95'][0])}, {fmt(diff['ci95'][1])}]" if diff["ci95"] else "–"
        rows.append([metric, f"{fmt(m['base']['mean'])} ± {fmt(m['base']['std'])}",
                     f"{fmt(m['adapted']['mean'])} ± {fmt(m['adapted']['std'])}", fmt(diff["mean"]), ci,
                     verdict_cell(diff["verdict"])])
    parts += [f"<h2>Downstream: {html.escape(down['task'])}</h2>",
              f"<p>Test-set metrics, mean ± std over seeds {html.escape(str(down['seeds']))}; the difference "
              "is adapted − base, paired by seed, with a 95% percentile-bootstrap CI over seeds"
              + (" (with so few seeds the CI is rough: add seeds for a firmer answer)" if len(down["seeds"]) < 5
                 else "") + ".</p>",
              table(["metric", "base", "adapted", "difference", "95% CI", "verdict"], rows)]
    parts += ["<h2>Loss curves</h2>", '<div class="plots">' + "".join(figures.values()) + "</div>"]
    parts += ["<h2>Data</h2>", f"<pre>{html.escape(compare['data_text'])}</pre>"]
    parts += ["<h2>Params</h2>", f"<pre>{html.escape(params_yaml)}</pre>"]
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><title>DAPT report</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
