"""pipeline/report.py: self-contained inline SVG plots, the verdict in words, and the one-file HTML report."""

from __future__ import annotations

import re

from pipeline.report import (ci, curves_figure, data_section, fill_mask_section, fmt, head_caution, headline,
                             render, signed, table, trust, verdict_cell)
from pipeline.stats import mlm_loss_difference, paired_difference, summary

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
    svg = curves_figure("downstream dev loss", SERIES, key="dev")
    assert_self_contained_svg(svg)
    assert "<text" not in svg  # text is drawn as paths: no fonts needed
    assert "<?xml" not in svg and "<!DOCTYPE" not in svg  # ready to inline into HTML
    # base (blue) and adapted (red) are both drawn, faint seeds and bold means, the means findable by id
    assert "#1f77b4" in svg and "#d62728" in svg
    assert svg.count("stroke-opacity: 0.25") == 3  # three non-empty seed runs
    assert '<g id="dev-base-mean">' in svg and '<g id="dev-adapted-mean">' in svg


def test_curves_figure_reference_lines_and_unknown_model_colour():
    svg = curves_figure("pretraining", {"held-out": {"mean": [(1, 5.0), (2, 4.0)]}, "other": {"mean": [(1, 1.0)]}},
                        hlines={"base held-out loss": 4.5})
    assert_self_contained_svg(svg)
    assert "#555555" in svg and "#2ca02c" in svg
    assert "stroke-dasharray" in svg and "#1f77b4" in svg  # the dashed base reference line, in base's colour
    assert 'id="-' not in svg  # no key: no ids


def test_curves_figure_is_reproducible():
    assert curves_figure("t", SERIES) == curves_figure("t", SERIES)


def make_compare(untrained: bool = False, seeds=(1, 2, 3), warmup=None, accuracy=(0.75, 0.78, 0.74)) -> dict:
    base_acc = [0.70, 0.72, 0.69][: len(seeds)]
    adapted_acc = list(accuracy)[: len(seeds)]
    loss = mlm_loss_difference([2, 2, 2, 2], [6.0, 6.4, 5.8, 6.2], [5.0, 5.2, 4.8, 5.1])
    return {
        "schema_version": 1,
        "verdict": "better",
        "mlm": {
            "base": {"loss": 3.05, "perplexity": 21.11, "top1_accuracy": 0.3, "top10_accuracy": 0.6},
            "adapted": {"loss": 2.51, "perplexity": 12.3, "top1_accuracy": 0.41, "top10_accuracy": 0.72},
            "lines": 4, "masked_tokens": 1234, "base_head_untrained": untrained, "base_head_warmup_steps": warmup,
            "loss_difference": loss,
            "perplexity_ratio": {"value": 0.58, "ci95_low": 0.55, "ci95_high": 0.61},
        },
        "downstream": {
            "task": "triplet", "seeds": list(seeds), "primary_metric": "accuracy",
            "metrics": {"accuracy": {"base": summary(base_acc), "adapted": summary(adapted_acc),
                                     "difference": paired_difference(base_acc, adapted_acc, "accuracy"),
                                     "test_set": None}},
        },
        "data": {"leaked_lines": 1},
    }


def inputs(seeds=(1, 2, 3)) -> dict:
    tests = {"base": [0.70, 0.72, 0.69], "adapted": [0.75, 0.78, 0.74]}
    return {"finetune": {m: {"seeds": {str(s): {"test": {"accuracy": v}} for s, v in zip(seeds, tests[m])}}
                         for m in tests},
            "pretrain": {"steps": 20, "precision": "32-true", "base_head_missing_weights": ["cls.predictions"]},
            "split": {"files": 1, "lines_in": 10, "lines_out": {"train": 8, "val": 1}, "dropped": {"leaked": 1}},
            "mask": {"max_seq_len": 64, "train": {"lines": 8, "tokens": 80, "copies": 2, "masked_fraction": 0.15,
                                                  "unk_rate": 0.01, "pieces_per_word": 1.2}},
            "fill_mask": None}


def test_headline_words():
    better = headline(make_compare())
    assert better[0].startswith("Adapting helped on the downstream task (triplet): accuracy 0.7567 adapted vs "
                                "0.7033 base, difference +0.0533, 95% CI [0.0500, 0.0600], paired over 3 seeds "
                                "→ better.")
    assert better[1].startswith("Held-out masked-LM loss: 2.510 adapted vs 3.050 base (-0.538, 95% CI [")
    assert better[1].endswith("over 4 lines) → better.")
    assert "with 3 seeds a 95% bootstrap CI is just the range of the three differences" in better[2]
    worse = headline(make_compare(accuracy=(0.60, 0.61, 0.62)))[0]
    assert worse.startswith("Adapting hurt on the downstream task") and worse.endswith("→ worse.")
    unsure = headline(make_compare(accuracy=(0.72, 0.70, 0.70)))[0]
    assert unsure.startswith("No clear effect of adapting") and unsure.endswith("→ no significant difference.")
    few = headline(make_compare(seeds=(1, 2)))
    assert few[0].startswith("Too little evidence to tell whether adapting helped")
    assert "95% CI" not in few[0] and "at least 3" in few[2]
    assert len(better) == 3
    disagree = make_compare()
    disagree["downstream"]["metrics"]["accuracy"]["test_set"] = {
        "mean": 0.05, "n": 80, "method": "test-set", "ci95_low": -0.01, "ci95_high": 0.11,
        "verdict": "no significant difference"}
    assert headline(disagree)[3] == ("Resampling the 80 test examples instead gives 95% CI [-0.0100, 0.1100] → no "
                                     "significant difference: the test set is too small to settle it on its own.")
    spread = make_compare(accuracy=(0.72, 0.70, 0.70))
    spread["downstream"]["metrics"]["accuracy"]["test_set"] = {
        "mean": 0.003, "n": 5000, "method": "test-set", "ci95_low": 0.001, "ci95_high": 0.005, "verdict": "better"}
    assert headline(spread)[3].endswith("→ better: the difference stands out from the test set's noise but not "
                                        "from the seeds' spread.")
    assert headline(make_compare(untrained=True))[1].endswith("; the base was scored with an untrained MLM head.")
    assert headline(make_compare(warmup=200))[1].endswith("; the base was scored with a head warmed up for 200 steps.")


def test_trust_words():
    seeds = lambda n: {"method": "seeds", "n": n, "ci95_low": 0.1, "ci95_high": 0.2}  # noqa: E731
    assert trust(seeds(5), 5).startswith("How firm: rough — a bootstrap over 5 seeds makes intervals narrower")
    assert trust(seeds(12), 12) == "How firm: 12 paired seeds; the CI is a percentile bootstrap over seeds."
    one = trust({"method": "test-set", "n": 300, "ci95_low": 0.1, "ci95_high": 0.2}, 1)
    assert one.startswith("How firm: only 1 seed, so the CI is a test-set bootstrap — it covers the luck of this "
                          "test set but not the variation between fine-tuning seeds")


def test_head_caution():
    assert "never trained" in head_caution(make_compare(untrained=True)["mlm"])
    warmed = head_caution(make_compare(warmup=150)["mlm"])
    assert "a head warmed up for 150 steps with the encoder frozen" in warmed and "never trained" not in warmed
    assert head_caution(make_compare()["mlm"]) == ""


def test_render_contents():
    figures = {"train": curves_figure("downstream train loss", SERIES, key="train"),
               "pretrain": curves_figure("pretraining", {"adapted": {"mean": [(1, 5.0), (2, 4.0)]}})}
    page = render(make_compare(), figures, "seed: 42\nsplit: {inputs: [data/<x>]}\n", inputs())
    assert page.startswith("<!doctype html>") and page.endswith("</html>")
    # the verdict first
    assert page.index('<div class="verdict" id="verdict"><p>Adapting helped') < page.index("<h2>")
    assert "Caution" not in page and 'class="warn"' not in page
    # downstream table row: primary metric in bold, mean ± std, difference, CI, over what, verdict
    row = re.search(r"<tr><td><b>accuracy</b></td>(.*?)</tr>", page).group(1)
    assert row.startswith("<td>0.7033 ± 0.0153</td><td>0.7567 ± 0.0208</td><td>+0.0533</td>"
                          "<td>[0.0500, 0.0600]</td><td>3 seeds</td><td><span class=\"better\">better</span></td>")
    assert "<tr><td>1</td><td>0.7000 → 0.7500</td></tr>" in page  # per seed
    # MLM table rows and the paired line
    assert "<tr><td>loss</td><td>3.0500</td><td>2.5100</td></tr>" in page
    assert "<tr><td>top10_accuracy</td><td>0.6000</td><td>0.7200</td></tr>" in page
    assert "1234 masked tokens on 4 held-out lines" in page
    assert re.search(r"Loss, adapted − base, paired by line: -0\.5375, 95% CI \[-0\.\d{4}, -0\.\d{4}\] \(bootstrap "
                     r'over 4 lines\) → <span class="better">better</span>\. Perplexity ratio adapted / base: '
                     r"0\.5800, 95% CI \[0\.5500, 0\.6100\]", page)
    # the figures are inlined in order, in figures with ids, and nothing external is referenced
    assert page.count("<svg") == 2 and '<figure id="fig-train"><svg' in page
    assert page.index(figures["train"]) < page.index(figures["pretrain"])
    assert "<script" not in page.lower() and "<link" not in page and "src=" not in page
    assert not re.search(r"href=\"(https?:)?//", page)
    # fill-mask absent, data, pretrain and params, escaped
    assert "Not available: the evaluate stage wrote no" in page
    assert "1 corpus line also occurred in the task's dev/test texts and was removed" in page
    assert "<tr><td>base_head_missing_weights</td>" not in page  # lists are not shown as scalars
    assert "<tr><td>precision</td><td>32-true</td></tr>" in page
    assert "split: {inputs: [data/&lt;x&gt;]}" in page


def test_render_warns_about_an_untrained_head():
    page = render(make_compare(untrained=True), {}, "", inputs())
    assert '<p class="warn"><b>Caution:</b> the base model has no MLM head' in page
    assert page.index('class="warn"') < page.index("<h2>")


def test_render_without_ci():
    compare = make_compare(seeds=(1, 2))
    assert compare["downstream"]["metrics"]["accuracy"]["difference"]["ci95_low"] is None
    page = render(compare, {}, "", inputs(seeds=(1, 2)))
    row = re.search(r"<tr><td><b>accuracy</b></td>(.*?)</tr>", page).group(1)
    assert "<td>–</td><td>2 seeds</td><td><span class=\"\">too few seeds to tell (n=2, need 3)</span></td>" in row


def test_fill_mask_section_joins_lines():
    rows = {"base": {"rows": [{"line": 3, "text": "a [MASK] <b>", "target": "cat", "top10": [["dog", 0.5],
                                                                                          ["cat", 0.25]]},
                              {"line": 9, "text": "only in base", "target": "x", "top10": []}]},
            "adapted": {"rows": [{"line": 3, "text": "a [MASK] <b>", "target": "cat",
                                  "top10": [[f"t{i}", 0.1] for i in range(10)]}]}}
    html = "".join(fill_mask_section(rows))
    assert "<td>a [MASK] &lt;b&gt;</td><td><b>cat</b></td><td>dog&nbsp;0.50<br><b>cat</b>&nbsp;0.25</td>" in html
    assert "t4&nbsp;0.10</td>" in html and "t5" not in html  # the top five only
    assert "only in base" not in html  # a line must be in both to be compared
    empty = "".join(fill_mask_section({"base": {"rows": []}, "adapted": {"rows": []}}))
    assert "No held-out line to show" in empty and "<table" not in empty


def test_data_section_leakage_words():
    split, mask = inputs()["split"], inputs()["mask"]
    assert "No corpus line occurred in the task's dev/test texts (leakage: 0)." in "".join(
        data_section({"leaked_lines": 0}, split, mask))
    html = "".join(data_section({"leaked_lines": 7}, split, mask))
    assert "7 corpus lines also occurred in the task's dev/test texts and were removed" in html
    assert "<tr><td>train</td><td>8</td><td>80</td><td>2</td><td>15.00%</td><td>1.000%</td><td>1.200</td></tr>" in html
    assert "<tr><td>dropped: leaked</td><td>1</td></tr>" in html


def test_fmt_and_helpers():
    assert fmt(None) == "–"
    assert fmt(0.123456) == "0.1235"
    assert fmt(1234.5678) == "1235"
    assert fmt(123456.0) == "1.235e+05"
    assert fmt(7) == "7"
    assert fmt("<b>") == "&lt;b&gt;"
    assert signed(0.5) == "+0.5000" and signed(-0.5) == "-0.5000" and signed(0.0) == "0.0000"
    assert ci({"ci95_low": 0.1, "ci95_high": 0.2}) == "[0.1000, 0.2000]"
    assert ci({"ci95_low": None}) == "–" and ci(None) == "–"
    assert verdict_cell("worse") == '<span class="worse">worse</span>'
    assert verdict_cell("no <significant>") == '<span class="">no &lt;significant&gt;</span>'
    assert table(["a<", "b"], [[1, "x"]]) == (
        "<table><tr><th>a&lt;</th><th>b</th></tr><tr><td>1</td><td>x</td></tr></table>")
