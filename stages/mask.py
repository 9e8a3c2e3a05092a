"""mask: tokenize the lines with the base model's tokenizer and apply BERT's masking -> Arrow shards.

Reads artifacts/lines, writes artifacts/masked: train-*.arrow (mask.dupe_factor masked copies, or in
mask.mode: dynamic the unmasked ids for the training loader to mask per epoch), val-*.arrow (one static
copy), spec.json (what the masks are made of) and stats.json (masked fraction, replacement split, UNK rate and
word pieces per word of the base tokenizer on this corpus, length histogram).
"""

from pipeline.config import load_params
from pipeline.encode import mask_corpus
from pipeline.io import atomic_dir, write_json
from pipeline.models import Trust, load_tokenizer
from stages import LINES, MASKED, parser, run


def main(argv: list[str]) -> None:
    parser(__doc__, "dapt mask").parse_args(argv)
    params = load_params()
    tokenizer = load_tokenizer(params.base_model, Trust.of(params))
    with atomic_dir(MASKED) as tmp:
        stats = mask_corpus(LINES, tmp, tokenizer, params.mask, params.seed)
        write_json(tmp / "stats.json", stats)
    t = stats["train"]
    copies = "unmasked (dynamic)" if stats["mode"] == "dynamic" else f"x {t['copies']} copies"
    print(f"mask: {t['lines']} lines {copies}, {t['tokens']} tokens, masked {t['masked_fraction']:.2%} "
          f"(mask/random/keep {t['replacement']['mask']:.0%}/{t['replacement']['random']:.0%}/"
          f"{t['replacement']['keep']:.0%}), UNK rate {t['unk_rate']:.3%}, {t['pieces_per_word']:.2f} pieces/word")


if __name__ == "__main__":
    run(main)
