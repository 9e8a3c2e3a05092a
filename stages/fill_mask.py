"""fill-mask: the top-10 guesses of one or more masked-LM models for each [MASK] of a text, side by side.

    dapt fill-mask "the night is [MASK] and cold"                 models/base next to models/adapted
    dapt fill-mask --model bert-base-uncased --model models/adapted "text with [MASK]" "another [MASK]"

A model is a folder, a hub id already in the local cache, or `base` / `adapted` (models/base, models/adapted).
Type [MASK] whatever the model: it becomes each model's own mask token (<mask> for RoBERTa).
"""

import argparse

from pipeline.fill_mask import MASK, fill_text, side_by_side
from pipeline.models import ModelError, Trust, load_masked_lm, load_tokenizer
from stages import MODEL_NAMES, MODELS, trust_flags


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="dapt fill-mask", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("texts", nargs="+", metavar="TEXT", help=f"a text with {MASK} where a word is missing")
    p.add_argument("--model", action="append", metavar="MODEL",
                   help="a model to ask: a hub id, a folder, or base / adapted (the pipeline's models/, "
                        "from base_model in params.yaml and the pretrain stage); repeat for more columns; "
                        "default: base and adapted")
    p.add_argument("--top", type=int, default=10, help="guesses per model (default 10)")
    trust_flags(p)
    args = p.parse_args(argv)
    trust = Trust(args.trust_remote_code, args.allow_pickle_weights)
    names = args.model or list(MODEL_NAMES)
    models = {}
    for name in names:
        path = str(MODELS / name) if name in MODEL_NAMES and (MODELS / name).is_dir() else name
        models[name] = (load_masked_lm(path, trust)[0], load_tokenizer(path, trust))
    for text in args.texts:
        answers = {name: fill_text(model, tokenizer, text, args.top) for name, (model, tokenizer) in models.items()}
        masks = {len(a) for a in answers.values()}
        if masks == {0}:
            raise ModelError(f"fill-mask: no {MASK} in the text {text!r}")
        print(f"\n{text}")
        for i in range(max(masks)):
            if max(masks) > 1:
                print(f"  mask {i + 1}:")
            print(side_by_side({name: a[i] if i < len(a) else [] for name, a in answers.items()}))
