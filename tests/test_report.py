"""pipeline/report.py: self-contained inline SVG plots and the one-file HTML report."""

from __future__ import annotations

import re

from pipeline.report import curves_figure, fmt, render, table, verdict_cell
from pipeline.stats import paired_difference, summary

SERIES = {
    "base": {"seeds": [[(0, 3.0), (10, 2.5), (20, 2.2)], [(0, 3.2), (10, 2.6), (20, 2.1)]],
             "mean": [(0, 3.1), (10, 2.55), (20, 2.15)]},
    "adapted": {"seeds": [[(0, 2.5), (10, 2.0), (20, 1.8)], []], "mean": [(0, 2.5), (10, 2.0), (20, 1.8)]},
}


def assert_self_contained_svg(svg: str) -> None:
    assert svg.startswith("<svg")
    assert svg.rstrip().endswith("</svg>")
    assert "<script" not in svg.lower()
    assert not re.search(r"href=\"(https?:)?//", svg)
    assert "<image" not in svg  # no embedded or linked bitmaps
    assert "@import" not in svg and "url(http" not in svg
    # every http(s) mention is an XML namespace / RDF identifier, never something a browser fetches
    for m in re.finditer(r"https?://", svg):
        before = svg[max(0, m.start() - 40):m.start()]
        assert re.search(r"(xmlns(:\w+)?=\"|rdf:resource=\"|<dc:title>[^<]*)$", before), before


def test_curves_figure_is_inline_svg():
    svg = curves_figure("downstream dev loss", SERIES)
    assert_self_contained_svg(svg)
    assert "<text" not in svg  # text is drawn as paths: no fonts needed
    assert "<?xml" not in svg and "<!DOCTYPE" not in svg  # ready to inline into HTML
    # base (blue) and adapted (red) are both drawn, faint seeds and bold means
    assert "#1f77b4" in svg and "#d62728" in svg
    assert svg.count("stroke-opacity: 0.25") == 3  # three non-empty seed runs


def test_curves_figure_single_series_and_unknown_model_colour():
    svg = curves_figure("pretraining", {"adapted": {"mean": [(1, 5.0), (2, 4.0)]}, "other": {"mean": [(1, 1.0)]}})
    assert_self_contained_svg(svg)
    assert "#555555" in svg
    assert "#1f77b4" not in svg


def test_curves_figure_is_reproducible():
    assert curves_figure("t", SERIES) == curves_figure("t", SERIES)


def make_compare(untrained: bool, seeds=(1, 2, 3)) -> dict:
    base_acc = [0.70, 0.72, 0.69][: len(seeds)]
    adapted_acc = [0.75, 0.78, 0.74][: len(seeds)]
    diff = paired_difference(base_acc, adapted_acc, "accuracy")
    loss_diff = paired_difference([3.0, 3.2, 2.9, 3.1], [2.5, 2.6, 2.4, 2.55], "loss")
    return {
        "headline": "Downstream (triplet, 3 seeds): adapted accuracy 0.7567 vs base 0.7033 → better <b>&</b>",
        "mlm": {
            "base": {"loss": 3.05, "perplexity": 21.11, "top1_accuracy": 0.3, "top10_accuracy": 0.6,
                     "masked_tokens": 1234},
            "adapted": {"loss": 2.51, "perplexity": 12.3, "top1_accuracy": 0.41, "top10_accuracy": 0.72,
                        "masked_tokens": 1234},
            "lines": 4, "base_head_untrained": untrained, "paired_loss": loss_diff,
        },
        "downstream": {
            "task": "triplet", "seeds": list(seeds), "primary_metric": "accuracy",
            "metrics": {"accuracy": {"base": summary(base_acc), "adapted": summary(adapted_acc), "difference": diff}},
        },
        "data": {},
        "data_text": '{"files": 1}\nmask: 10 training lines <unk>',
    }


def test_render_contents():
    figures = {"train/loss": curves_figure("downstream train loss", SERIES),
               "pretrain": curves_figure("pretraining", {"adapted": {"mean": [(1, 5.0), (2, 4.0)]}})}
    page = render(make_compare(untrained=False), figures, "seed: 42\nsplit: {inputs: [data/<x>]}\n")
    assert page.startswith("<!doctype html>") and page.endswith("</html>")
    # headline first, escaped
    assert '<p class="verdict">Downstream (triplet, 3 seeds): adapted accuracy 0.7567 vs base 0.7033 → better ' \
           "&lt;b&gt;&amp;&lt;/b&gt;</p>" in page
    assert page.index('class="verdict"') < page.index("<h2>")
    assert "Caution" not in page and 'class="warn"' not in page
    # MLM table rows
    assert "<tr><td>loss</td><td>3.0500</td><td>2.5100</td></tr>" in page
    assert "<tr><td>perplexity</td><td>21.1100</td><td>12.3000</td></tr>" in page
    assert "<tr><td>top10_accuracy</td><td>0.6000</td><td>0.7200</td></tr>" in page
    assert "1234 masked tokens on 4 held-out lines" in page
    assert re.search(r"mean -0\.5375, 95% CI \[-0\.\d{4}, -0\.\d{4}\] over 4 lines → "
                     r'<span class="better">better</span>', page)
    # downstream table row: mean ± std, difference, CI, verdict
    row = re.search(r"<tr><td>accuracy</td>(.*?)</tr>", page).group(1)
    assert "<td>0.7033 ± 0.0153</td><td>0.7567 ± 0.0208</td><td>0.0533</td>" in row
    assert re.search(r'<td>\[0\.\d{4}, 0\.\d{4}\]</td><td><span class="better">better</span></td>$', row)
    assert "<h2>Downstream: triplet</h2>" in page
    assert "with so few seeds the CI is rough" in page
    # the figures are inlined, in order, and nothing external is referenced
    assert page.count("<svg") == 2
    assert page.index(figures["train/loss"]) < page.index(figures["pretrain"])
    assert "<script" not in page.lower() and "<link" not in page and "src=" not in page
    assert not re.search(r"href=\"(https?:)?//", page)
    # data text and params escaped inside <pre>
    assert "mask: 10 training lines &lt;unk&gt;</pre>" in page
    assert "split: {inputs: [data/&lt;x&gt;]}" in page


def test_render_warns_about_an_untrained_head():
    page = render(make_compare(untrained=True), {}, "")
    assert '<p class="warn"><b>Caution:</b> the base model has no MLM head' in page
    assert page.index('class="warn"') < page.index("<h2>Held-out masked-LM</h2>")


def test_render_without_ci_and_with_many_seeds():
    compare = make_compare(untrained=False, seeds=(1, 2))
    assert compare["downstream"]["metrics"]["accuracy"]["difference"]["ci95"] is None
    page = render(compare, {}, "")
    row = re.search(r"<tr><td>accuracy</td>(.*?)</tr>", page).group(1)
    assert "<td>–</td><td><span class=\"\">too few pairs to tell (n=2, need 3)</span></td>" in row
    compare["downstream"]["seeds"] = [1, 2, 3, 4, 5]
    assert "with so few seeds" not in render(compare, {}, "")


def test_fmt_and_helpers():
    assert fmt(None) == "–"
    assert fmt(0.123456) == "0.1235"
    assert fmt(1234.5678) == "1235"
    assert fmt(123456.0) == "1.235e+05"
    assert fmt(7) == "7"
    assert fmt("<b>") == "&lt;b&gt;"
    assert verdict_cell("worse") == '<span class="worse">worse</span>'
    assert verdict_cell("no <significant>") == '<span class="">no &lt;significant&gt;</span>'
    assert table(["a<", "b"], [[1, "x"]]) == (
        "<table><tr><th>a&lt;</th><th>b</th></tr><tr><td>1</td><td>x</td></tr></table>")
