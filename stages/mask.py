"""mask: tokenize the lines with the base model's tokenizer and apply BERT's masking -> Arrow shards."""

from pipeline.config import load_params
from pipeline.encode import mask_corpus
from pipeline.io import atomic_dir, write_json
from pipeline.models import load_tokenizer
from stages import LINES, MASKED, parser, run


def main(argv: list[str]) -> None:
    parser(__doc__, "dapt mask").parse_args(argv)
    params = load_params()
    tokenizer = load_tokenizer(params.base_model)
    with atomic_dir(MASKED) as tmp:
        stats = mask_corpus(LINES, tmp, tokenizer, params.mask, params.seed)
        write_json(tmp / "stats.json", stats)
    t = stats["train"]
    print(f"mask: {t['lines']} lines x {t['copies']} copies, {t['tokens']} tokens, "
          f"masked {t['masked_fraction']:.2%}, UNK rate {t['unk_rate']:.3%}, {t['pieces_per_word']:.2f} pieces/word")


if __name__ == "__main__":
    run(main)
