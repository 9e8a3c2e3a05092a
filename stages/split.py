"""split: raw in-domain text -> clean, de-duplicated lines (Arrow), train/val by document, stats.json.

Reads split.inputs (files, folders, globs of .txt .txt.gz .jsonl .jsonl.gz .csv .parquet); writes
artifacts/lines: train-*.arrow and val-*.arrow (text, source, line_no, doc, section) and stats.json (lines
in and out, and every drop reason with its count). Lines of the task's dev/test texts are removed (leakage).
"""

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
    out = stats["lines_out"]
    print(f"split: {stats['files']} files, {stats['lines_in']} lines in -> {out['train']} train + {out['val']} val "
          f"({stats['documents_out']['train']} + {stats['documents_out']['val']} documents), "
          f"dropped {stats['dropped'] or 'nothing'}")


if __name__ == "__main__":
    run(main)
