"""The one-file HTML report: the verdict first, then the tables, curves, fill-mask examples, data and params.

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

from pipeline.stats import BETTER, MIN_PAIRS, WORSE  # noqa: E402

COLORS = {"base": "#1f77b4", "adapted": "#d62728", "train": "#ff7f0e", "held-out": "#2ca02c"}
FILL_MASK_TOP = 5  # predictions shown per model and line
CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1040px;margin:2em auto;
  padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right;
  white-space:nowrap}td.wrap{white-space:normal}small{color:#555}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.verdict{font-size:1.15em;padding:.8em 1em;background:#f0f6ff;border-left:4px solid #1f77b4}
.verdict p{margin:.3em 0}
.warn{padding:.6em 1em;background:#fff6e0;border-left:4px solid #e0a000}
.better{color:#137333;font-weight:600}.worse{color:#b3261e;font-weight:600}
.fill td{text-align:left;vertical-align:top;font-size:13px;white-space:normal}.fill b{color:#137333}
.down td:nth-child(n+7){white-space:normal;min-width:10em}
pre{background:#f7f7f7;padding:.8em;white-space:pre-wrap;font-size:13px}
.plots{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0;width:calc(50% - .5em)}figure svg{width:100%;height:auto}
"""


def svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def curves_figure(title: str, series: dict[str, dict[str, list]], ylabel: str = "loss", key: str = "",
                  hlines: dict[str, float] | None = None) -> str:
    """series: model -> {"seeds": [[(step, value), ...], ...], "mean": [(step, value), ...]}.
    Each seed is drawn faint, the mean bold, base and adapted overlaid. The bold lines get the ids
    `<key>-<model>-mean` (what the browser test looks for); `hlines` draws dashed reference levels."""
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    for model, s in series.items():
        color = COLORS.get(model, "#555")
        for run in s.get("seeds", []):
            if run:
                ax.plot(*zip(*run), color=color, alpha=0.25, linewidth=1)
        if s.get("mean"):
            (line,) = ax.plot(*zip(*s["mean"]), color=color, linewidth=2.2, label=model)
            line.set_gid(f"{key}-{model}-mean" if key else None)
    for label, level in (hlines or {}).items():
        ax.axhline(level, color=COLORS.get(label.split()[0], "#555"), linestyle="--", linewidth=1.2, label=label)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return svg(fig)


def table(header: list[str], rows: list[list], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table{f" class={cls}" if cls else ""}><tr>{head}</tr>{body}</table>'


def fmt(x, digits: int = 4) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) >= 1000 else f"{x:.{digits}f}"
    return html.escape(str(x))


def signed(x: float, digits: int = 4) -> str:
    return ("+" if x > 0 else "") + fmt(float(x), digits)


def ci(d: dict | None) -> str:
    if not d or d.get("ci95_low") is None:
        return "–"
    return f"[{fmt(d['ci95_low'])}, {fmt(d['ci95_high'])}]"


def verdict_cell(v: str) -> str:
    cls = v if v in (BETTER, WORSE) else ""
    return f'<span class="{cls}">{html.escape(v)}</span>'


def method_words(d: dict, seeds: int, short: bool = False) -> str:
    if d["method"] == "seeds":
        return f"{d['n']} seeds" if short else f"paired over {d['n']} seeds"
    if d["method"] == "test-set":
        s = f"{seeds} seed{'s' * (seeds != 1)}"
        return f"test set, {s}" if short else f"test-set bootstrap over {d['n']} examples ({s})"
    return f"{d['n']} lines" if short else f"paired over {d['n']} held-out lines"


# -- the words ------------------------------------------------------------------------------------------------

def headline(compare: dict) -> list[str]:
    """The verdict in plain words: did adapting help, by how much, and how far to trust it."""
    down, mlm = compare["downstream"], compare["mlm"]
    metric = down["primary_metric"]
    m = down["metrics"][metric]
    d = m["difference"]
    seeds = len(down["seeds"])
    said = {BETTER: "Adapting helped", WORSE: "Adapting hurt"}.get(d["verdict"], "No clear effect of adapting")
    if d["verdict"].startswith("too few"):
        said = "Too little evidence to tell whether adapting helped"
    ci_text = f", 95% CI {ci(d)}" if d.get("ci95_low") is not None else ""
    lines = [f"{said} on the downstream task ({down['task']}): {metric} {fmt(m['adapted']['mean'])} adapted vs "
             f"{fmt(m['base']['mean'])} base, difference {signed(d['mean'])}{ci_text}, "
             f"{method_words(d, seeds)} → {d['verdict']}."]
    ld = mlm["loss_difference"]
    lines.append(f"Held-out masked-LM loss: {fmt(mlm['adapted']['loss'], 3)} adapted vs {fmt(mlm['base']['loss'], 3)} "
                 f"base ({signed(ld['mean'], 3)}, 95% CI {ci(ld)}, over {ld['n']} lines) → {ld['verdict']}"
                 + ("; the base was scored with an untrained MLM head." if mlm["base_head_untrained"] else
                    f"; the base was scored with a head warmed up for {mlm['base_head_warmup_steps']} steps."
                    if mlm.get("base_head_warmup_steps") else "."))
    lines.append(trust(d, seeds))
    t = m.get("test_set")
    if t and t["verdict"] != d["verdict"]:
        why = ("the test set is too small to settle it on its own" if t["verdict"] not in (BETTER, WORSE) else
               "the difference stands out from the test set's noise but not from the seeds' spread")
        lines.append(f"Resampling the {t['n']} test examples instead gives 95% CI {ci(t)} → {t['verdict']}: {why}.")
    return lines


def trust(d: dict, seeds: int) -> str:
    if d["method"] == "test-set":
        return (f"How firm: only {seeds} seed{'s' * (seeds != 1)}, so the CI is a test-set bootstrap — it covers "
                "the luck of this test set but not the variation between fine-tuning seeds, which for BERT on "
                f"small data is often several points. Run at least {MIN_PAIRS} seeds (finetune.seeds) to know.")
    if d["method"] != "seeds" or d.get("ci95_low") is None:
        return f"How firm: not at all — add seeds to finetune.seeds (at least {MIN_PAIRS}) for a confidence interval."
    if seeds < 10:
        why = ("with 3 seeds a 95% bootstrap CI is just the range of the three differences, so it excludes 0 "
               "whenever all three agree in sign" if seeds == 3 else
               f"a bootstrap over {seeds} seeds makes intervals narrower than they should be")
        return (f"How firm: rough — {why}. Treat the verdict as a hint and add seeds (finetune.seeds) for a firmer "
                "answer.")
    return f"How firm: {seeds} paired seeds; the CI is a percentile bootstrap over seeds."


def head_caution(mlm: dict) -> str:
    """What the base model's MLM figures measure, following the pretrain stage's account of the head."""
    if mlm["base_head_untrained"]:
        return ("<b>Caution:</b> the base model has no MLM head; the head used to score it was freshly initialised "
                "and never trained, so the base model's MLM figures measure an untrained head, not its encoder. "
                "Compare the MLM numbers with that in mind; the downstream comparison is not affected (it uses "
                "the encoder only).")
    if mlm.get("base_head_warmup_steps"):
        return (f"<b>Note:</b> the base model has no MLM head of its own; it was scored with a head warmed up for "
                f"{mlm['base_head_warmup_steps']} steps with the encoder frozen, so its MLM figures reflect the "
                "base encoder with a briefly trained head. The downstream comparison uses the encoder only.")
    return ""


# -- the sections ---------------------------------------------------------------------------------------------

def downstream_section(down: dict, finetuned: dict) -> list[str]:
    seeds = len(down["seeds"])
    primary = down["primary_metric"]
    second = any(m.get("test_set") for m in down["metrics"].values())  # the test-set column, when there is one
    header = ["metric", "base", "adapted", "adapted − base", "95% CI", "over", "verdict"] + ["test-set 95% CI"] * second

    def row(metric: str) -> list:
        m = down["metrics"][metric]
        d, t = m["difference"], m.get("test_set")
        return [f"<b>{html.escape(metric)}</b>" if metric == primary else html.escape(metric),
                f"{fmt(m['base']['mean'])} ± {fmt(m['base']['std'])}",
                f"{fmt(m['adapted']['mean'])} ± {fmt(m['adapted']['std'])}", signed(d["mean"]), ci(d),
                html.escape(method_words(d, seeds, short=True)), verdict_cell(d["verdict"])] + (
                [f"{ci(t)}<br><small>{html.escape(t['verdict'])}</small>" if t else "–"] if second else [])

    overall = sorted((k for k in down["metrics"] if "/" not in k), key=lambda k: k != primary)  # primary first
    per_class = [k for k in down["metrics"] if "/" in k]
    out = [f"<h2>Downstream: {html.escape(down['task'])}</h2>",
           f"<p>Test-set metrics of the epoch with the best dev loss, mean ± std over seeds "
           f"{html.escape(str(down['seeds']))} (the same seeds, data order and settings for both models; "
           f"<b>{html.escape(primary)}</b> decides the verdict). The 95% CI of adapted − base is a percentile "
           f"bootstrap: over seeds when there are at least {MIN_PAIRS}, else over test examples (labelled "
           "“test set”)." + (" The last column resamples test examples instead of seeds: the share of the noise "
                             "that comes from the test set's size." if second else "") + "</p>",
           table(header, [row(k) for k in overall], "down")]
    if per_class:
        out += ["<p>Per class (precision, recall, F1 of each label):</p>",
                table(header, [row(k) for k in per_class], "down")]
    per_seed = []
    for s in down["seeds"]:
        b, a = (finetuned[m]["seeds"][str(s)]["test"] for m in ("base", "adapted"))
        per_seed.append([s] + [f"{fmt(b[k])} → {fmt(a[k])}" for k in overall])
    out += ["<p>Per seed, base → adapted:</p>", table(["seed", *overall], per_seed)]
    return out


def mlm_section(mlm: dict) -> list[str]:
    rows = [[metric, fmt(mlm["base"][metric]), fmt(mlm["adapted"][metric])]
            for metric in ("loss", "perplexity", "top1_accuracy", "top10_accuracy")]
    d, r = mlm["loss_difference"], mlm["perplexity_ratio"]
    return ["<h2>Held-out masked-LM</h2>",
            f"<p>{mlm['masked_tokens']} masked tokens on {mlm['lines']} held-out lines, identical masks for both "
            "models.</p>", table(["metric", "base", "adapted"], rows),
            f"<p>Loss, adapted − base, paired by line: {signed(d['mean'])}, 95% CI {ci(d)} (bootstrap over "
            f"{d['n']} lines) → {verdict_cell(d['verdict'])}. Perplexity ratio adapted / base: {fmt(r['value'])}, "
            f"95% CI [{fmt(r['ci95_low'])}, {fmt(r['ci95_high'])}].</p>"]


def fill_mask_section(fill_mask: dict | None) -> list[str]:
    out = ["<h2>Fill-mask, side by side</h2>"]
    if not fill_mask:
        return out + ["<p>Not available: the evaluate stage wrote no reports/evaluate/&lt;model&gt;/fill_mask.json.</p>"]
    adapted = {r["line"]: r for r in fill_mask["adapted"]["rows"]}
    rows = []
    for b in fill_mask["base"]["rows"]:
        a = adapted.get(b["line"])
        if a is None:
            continue
        cells = []
        for r in (b, a):
            cells.append("<br>".join(
                (f"<b>{html.escape(tok)}</b>" if tok == r["target"] else html.escape(tok)) + f"&nbsp;{p:.2f}"
                for tok, p in r["top10"][:FILL_MASK_TOP]))
        rows.append([html.escape(b["text"]), f"<b>{html.escape(b['target'])}</b>", *cells])
    if not rows:
        return out + ["<p>No held-out line to show (evaluate.fill_mask_lines is 0, or no line had a masked "
                      "token).</p>"]
    return out + [f"<p>The top {FILL_MASK_TOP} predictions (probability) for one masked token per held-out line; "
                  "the true token in bold.</p>", table(["masked line", "target", "base", "adapted"], rows, "fill")]


def data_section(data: dict, split: dict, mask: dict) -> list[str]:
    rows = [["files read", fmt(split.get("files"))], ["lines read", fmt(split.get("lines_in"))]]
    rows += [[f"dropped: {k.replace('_', ' ')}", fmt(v)] for k, v in split.get("dropped", {}).items()]
    rows += [[f"{s} lines kept", fmt(n)] for s, n in split.get("lines_out", {}).items()]
    leak = data["leaked_lines"]
    leak_text = (f"{leak} corpus line{'s' * (leak != 1)} also occurred in the task's dev/test texts and "
                 f"{'were' if leak != 1 else 'was'} removed before pretraining, so the adapted model never saw "
                 "test text." if leak else "No corpus line occurred in the task's dev/test texts (leakage: 0).")
    mrows = [[s, fmt(m["lines"]), fmt(m["tokens"]), fmt(m["copies"]), f"{m['masked_fraction']:.2%}",
              f"{m['unk_rate']:.3%}", f"{m['pieces_per_word']:.3f}"]
             for s, m in mask.items() if isinstance(m, dict) and "tokens" in m]
    return ["<h2>Data</h2>", f"<p>{leak_text}</p>", table(["split stage", "count"], rows),
            "<p>Masking and how well the base tokenizer fits this domain (UNK rate; word pieces per "
            "whitespace word, 1.0 = every word is one token):</p>",
            table(["split", "lines", "tokens", "masked copies", "masked", "UNK rate", "pieces / word"], mrows)]


def pretrain_section(pretrain: dict) -> list[str]:
    shown = {k: v for k, v in pretrain.items() if not isinstance(v, (dict, list))}
    return ["<h2>Pretraining run</h2>", table(["", "value"], [[html.escape(k), fmt(v)] for k, v in shown.items()])]


def render(compare: dict, figures: dict[str, str], params_yaml: str, inputs: dict) -> str:
    """The page. `inputs` holds what the tables show beyond compare.json: "finetune" (metrics.json per model),
    "pretrain", "split" and "mask" (their stats), "fill_mask" (per model, or None)."""
    verdict = "".join(f"<p>{html.escape(line)}</p>" for line in headline(compare))
    parts = ["<h1>Domain-adaptive pretraining: base vs adapted</h1>", f'<div class="verdict" id="verdict">{verdict}'
             "</div>"]
    caution = head_caution(compare["mlm"])
    if caution:
        parts.append(f'<p class="warn">{caution}</p>')
    parts += downstream_section(compare["downstream"], inputs["finetune"])
    parts += mlm_section(compare["mlm"])
    parts += ["<h2>Loss curves</h2>", "<p>Each seed faint, the mean over seeds bold; base blue, adapted red.</p>",
              '<div class="plots">' + "".join(f'<figure id="fig-{k}">{v}</figure>' for k, v in figures.items())
              + "</div>"]
    parts += fill_mask_section(inputs.get("fill_mask"))
    parts += data_section(compare["data"], inputs["split"], inputs["mask"])
    parts += pretrain_section(inputs["pretrain"])
    parts += ["<h2>Params</h2>", f"<pre>{html.escape(params_yaml)}</pre>"]
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><title>DAPT report</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
