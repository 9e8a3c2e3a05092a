"""split: raw in-domain text -> clean, de-duplicated lines (Arrow), train/val by document, stats.json."""

from pipeline.config import load_params
from pipeline.corpus import split_corpus
from pipeline.io import atomic_dir, write_json
from pipeline.tasks import task_texts
from stages import LINES, parser, run


def main(argv: list[str]) -> None:
    parser(__doc__, "dapt split").parse_args(argv)
    params = load_params()
    with atomic_dir(LINES) as tmp:
        stats = split_corpus(params.split, tmp, params.seed, leak_texts=task_texts(params.task))
        write_json(tmp / "stats.json", stats)
    print(f"split: {stats['lines_in']} lines in -> {stats['lines_out']} out, dropped {stats['dropped']}")


if __name__ == "__main__":
    run(main)
