"""predict: run a fine-tuned model on texts given on the command line.

    dapt predict --model models/finetuned/adapted "some text" "another text"
    dapt predict --model models/finetuned/adapted "a premise" --pair "its hypothesis"     (a pair task)
    dapt predict --model models/finetuned/adapted "anchor text" "candidate 1" "candidate 2" (a triplet task)

A classification model prints each text's label and the probability of every label; a triplet model prints
the distance of each further text to the first, nearest first. The model folder is what the finetune stage
writes to models/finetuned/<base|adapted> when params.yaml sets finetune.save_model: true.
"""

from __future__ import annotations

import argparse
import json

from pipeline.finetuned import distances, load_finetuned, probabilities
from pipeline.models import ModelError, Trust
from stages import run, trust_flags


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="dapt predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a fine-tuned model folder (models/finetuned/<name>)")
    ap.add_argument("texts", nargs="+", help="texts to classify (triplet: an anchor, then the texts to rank)")
    ap.add_argument("--pair", action="append", default=[], metavar="TEXT",
                    help="the second text of a pair task, once per text, in the same order")
    ap.add_argument("--json", action="store_true", help="print one JSON object per text instead")
    trust_flags(ap)
    args = ap.parse_args(argv)
    module, tokenizer, meta = load_finetuned(args.model, Trust(args.trust_remote_code, args.allow_pickle_weights))
    max_len = meta["finetune"]["max_seq_len"]
    if meta["task"] == "triplet":
        if len(args.texts) < 2:
            raise ModelError(f"{args.model}: a triplet model ranks texts by distance to the first: give two or more")
        d = distances(module, tokenizer, args.texts[0], args.texts[1:], max_len).tolist()
        ranked = sorted(zip(d, args.texts[1:]))
        for dist, text in ranked:
            print(json.dumps({"text": text, "distance": dist}) if args.json else f"{dist:.4f}\t{text}")
        return
    if meta["pair"] != bool(args.pair) or (args.pair and len(args.pair) != len(args.texts)):
        raise ModelError(f"{args.model}: " + ("a pair model: give one --pair per text" if meta["pair"]
                                              else "not a pair model: --pair does not apply"))
    units = list(zip(args.texts, args.pair)) if args.pair else args.texts
    probs = probabilities(module, tokenizer, units, max_len)
    labels = meta["labels"]
    for unit, p in zip(units, probs.tolist()):
        best = max(range(len(labels)), key=p.__getitem__)
        if args.json:
            print(json.dumps({"text": unit, "label": labels[best], "probabilities": dict(zip(labels, p))}))
        else:
            ranked = sorted(zip(p, labels), reverse=True)
            print(f"{labels[best]}\t{p[best]:.3f}\t" + " ".join(f"{name}={q:.3f}" for q, name in ranked))


if __name__ == "__main__":
    run(main)
