"""Build the demo data set of the pipeline from Debian's ``fortunes`` package.

The fortune files (BSD licence, see ``copyright``) are small, freely licensed
text collections, sorted by topic, which makes them a good stand-in for a real
domain-adaptive pretraining setup:

* ``corpus/songs-poems.txt`` -- the unlabelled in-domain corpus for continued
  masked-language-model pretraining: every train-split piece of the
  ``songs-poems`` file, pieces separated by one blank line.
* ``tasks/fortune-category/{train,dev,test}.jsonl`` -- text classification:
  which fortune file does a piece come from (10 distinct topics)?
  Rows: ``{"id", "text", "label"}``.
* ``tasks/song-sections/{train,dev,test}.jsonl`` -- triplets for the "section
  by section" setup: are two parts from the same song or poem?  Rows:
  ``{"id", "anchor", "positive", "negative", "negative_id"}``; the parts are
  lists of lines, which the pipeline joins with the model's separator token.
* ``stats.json`` -- counts of everything above; ``copyright`` -- the licence.

Each piece goes to train/dev/test by a hash of its normalised text alone (see
``split_of``), so a piece -- and any copy of it in another file or with
another attribution -- lands in the same split in both tasks and in every run.
No dev/test piece is in the corpus, nor any train piece that contains one or is
part of one, so pretraining on the corpus cannot leak evaluation text.  The output is
deterministic: the same input gives byte-identical files.

Usage (standard library only)::

    python data/demo/build.py --fortunes-dir x/usr/share/games/fortunes --out data/demo
    python data/demo/build.py   # fetches the package itself, see below

Without ``--fortunes-dir`` the script runs ``apt-get download fortunes`` and
``dpkg-deb -x`` in a temporary directory, so it needs a Debian/Ubuntu machine
that can reach the Debian package registry.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import random
import shutil
import subprocess
import tempfile
import unicodedata
from pathlib import Path

CATEGORIES = ["computers", "food", "law", "love", "medicine", "politics",
              "science", "songs-poems", "sports", "startrek"]
CORPUS_FILE = "songs-poems"
SPLITS = ("train", "dev", "test")
MAX_CHARS = 400        # classification: drop longer pieces (keeps the demo fast)
MAX_PER_CATEGORY = 150  # classification: cap per category, all splits together
MIN_LINES, MAX_PART_LINES = 4, 8  # song sections
SEED = 1234
# Overstruck accents of the old files ("e" BACKSPACE "'" and the like).
ACCENTS = {"'": "\u0301", "`": "\u0300", '"': "\u0308", "^": "\u0302", "~": "\u0303"}


def overstrike(line: str) -> str:
    """Render backspace overstriking as a terminal would: ``_`` BS ``x`` (underline)
    becomes ``x``, ``'`` BS ``e`` becomes ``é``; other control characters go."""
    cells: list[str] = []
    pos = 0
    for ch in line:
        if ch == "\b":
            pos = max(pos - 1, 0)
            continue
        if unicodedata.category(ch) == "Cc" and ch != "\t":
            continue  # bells (^G) and the like
        if pos == len(cells):
            cells.append(ch)
        elif ch != "_":
            old = cells[pos]
            cells[pos] = (ch + ACCENTS[old] if old in ACCENTS else
                          old + ACCENTS[ch] if ch in ACCENTS and old != "_" else ch)
        pos += 1
    return unicodedata.normalize("NFC", "".join(cells))


def read_pieces(path: Path) -> list[str]:
    """The non-empty pieces of a fortune file, each normalised to lines joined by \\n."""
    text = path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n")
    pieces, current = [], []
    for raw in text.split("\n") + ["%"]:
        if raw == "%":
            lines = [overstrike(l).expandtabs(8).rstrip() for l in current]
            while lines and not lines[0]:
                lines.pop(0)
            while lines and not lines[-1]:
                lines.pop()
            if lines:
                pieces.append("\n".join(lines))
            current = []
        else:
            current.append(raw)
    return pieces


def is_attribution(line: str) -> bool:
    return line.strip().startswith("--")


def body_lines(piece: str) -> list[str]:
    """The non-blank lines of a piece without its attribution: lines starting with
    "--" and indented lines that directly continue them."""
    out, in_attr = [], False
    for line in piece.split("\n"):
        in_attr = is_attribution(line) or (in_attr and line[:1].isspace())
        if line.strip() and not in_attr:
            out.append(line.strip())
    return out


def digest(text: str, salt: str = "") -> str:
    return hashlib.sha256((salt + text).encode("utf-8")).hexdigest()


def squash(text: str) -> str:
    """The text of a piece without its attribution, whitespace collapsed."""
    return " ".join(" ".join(body_lines(text) or [text]).split())


def split_of(piece: str) -> str:
    """train/dev/test (70/15/15) from the piece text alone: lower-cased, whitespace
    collapsed, attribution dropped, so copies of a piece share their split."""
    key = squash(piece).lower()
    bucket = int(digest(key), 16) % 100
    return "train" if bucket < 70 else "dev" if bucket < 85 else "test"


def fetch_fortunes(workdir: Path) -> Path:
    """apt-get download fortunes + dpkg-deb -x (needs the Debian package registry)."""
    subprocess.run(["apt-get", "download", "fortunes"], cwd=workdir, check=True)
    deb = sorted(workdir.glob("fortunes_*.deb"))[-1]
    subprocess.run(["dpkg-deb", "-x", str(deb), str(workdir / "x")], check=True)
    return workdir / "x/usr/share/games/fortunes"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def by_id(row: dict) -> tuple[str, int]:
    name, idx = row["id"].rsplit(":", 1)
    return name, int(idx)


def build(fortunes: Path, out: Path) -> dict:
    pieces = {name: read_pieces(fortunes / name) for name in CATEGORIES}
    stats: dict = {"source": {"package": "fortunes", "pieces": {n: len(p) for n, p in pieces.items()}}}
    changelog = fortunes.parents[1] / "doc/fortunes/changelog.Debian.gz"
    if changelog.exists():  # first line: "fortune-mod (1:1.99.1-7.3) unstable; ..."
        with gzip.open(changelog, "rt", encoding="utf-8") as f:
            first = f.readline()
        stats["source"]["version"] = first.split("(", 1)[1].split(")", 1)[0]
        shutil.copyfile(fortunes.parents[1] / "doc/fortunes/copyright", out / "copyright")

    # a) fortune-category: short pieces, exact copies dropped (within a file: keep
    # the first; across files: the label is ambiguous, drop all), capped per label.
    labels: dict[str, set[str]] = {}
    for name, ps in pieces.items():
        for text in ps:
            labels.setdefault(text, set()).add(name)
    rows = {s: [] for s in SPLITS}
    stats["fortune-category"] = {s: {} for s in SPLITS}
    for name, ps in pieces.items():
        first = {}
        for i, text in enumerate(ps):
            if len(text) <= MAX_CHARS and labels[text] == {name}:
                first.setdefault(text, i)
        chosen = sorted(first, key=lambda t: digest(t, "cap:"))[:MAX_PER_CATEGORY]
        for text in chosen:
            split = split_of(text)
            rows[split].append({"id": f"{name}:{first[text]}", "text": text, "label": name})
            stats["fortune-category"][split][name] = stats["fortune-category"][split].get(name, 0) + 1
    for split in SPLITS:
        write_jsonl(out / f"tasks/fortune-category/{split}.jsonl", sorted(rows[split], key=by_id))

    # b) song-sections: first ceil(n/2) body lines vs the rest, each part capped at
    # MAX_PART_LINES lines; the negative is a random part of another piece of the split.
    parts, seen = {s: [] for s in SPLITS}, set()
    for i, text in enumerate(pieces[CORPUS_FILE]):
        lines = body_lines(text)
        key = "\n".join(lines).lower()
        if len(lines) >= MIN_LINES and key not in seen:
            seen.add(key)
            half = math.ceil(len(lines) / 2)
            parts[split_of(text)].append(
                (f"{CORPUS_FILE}:{i}", lines[:half][:MAX_PART_LINES], lines[half:][:MAX_PART_LINES]))
    rng = random.Random(SEED)
    for split in SPLITS:
        rows, items = [], parts[split]
        for k, (pid, anchor, positive) in enumerate(items):
            while True:
                j = rng.randrange(len(items) - 1)
                j += j >= k
                negative = items[j][1 + rng.randrange(2)]
                if negative not in (anchor, positive):
                    break
            rows.append({"id": pid, "anchor": anchor, "positive": positive,
                         "negative": negative, "negative_id": items[j][0]})
        write_jsonl(out / f"tasks/song-sections/{split}.jsonl", rows)
        stats.setdefault("song-sections", {})[split] = len(rows)

    # c) corpus: train pieces of songs-poems only, each once, blank-line runs collapsed.
    # Train pieces that contain, or are part of, a dev/test piece of any file go too.
    heldout = [(squash(t), " ".join(t.split()))
               for ps in pieces.values() for t in ps if split_of(t) != "train"]
    kept, done, excluded, containing = [], set(), 0, 0
    for text in pieces[CORPUS_FILE]:
        flat, own = " ".join(text.split()), squash(text)
        if split_of(text) != "train":
            excluded += 1
        elif any(body in flat or own in whole for body, whole in heldout):
            containing += 1
        elif flat not in done:
            done.add(flat)
            lines: list[str] = []
            for line in text.split("\n"):
                if line or lines[-1]:  # pieces never start with a blank line
                    lines.append(line)
            kept.append("\n".join(lines))
    corpus = "\n\n".join(kept) + "\n"
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    (out / "corpus/songs-poems.txt").write_text(corpus, encoding="utf-8", newline="\n")
    stats["corpus"] = {"pieces": len(kept), "lines": corpus.count("\n"),
                       "non_blank_lines": sum(1 for l in corpus.split("\n") if l),
                       "chars": len(corpus), "excluded_dev_test_pieces": excluded,
                       "excluded_train_pieces_overlapping_dev_test": containing,
                       "skipped_duplicate_pieces": len(pieces[CORPUS_FILE]) - excluded - containing - len(kept)}
    stats["rows"] = {str(p.relative_to(out)): sum(1 for _ in p.open(encoding="utf-8"))
                     for p in sorted(out.glob("tasks/*/*.jsonl"))}
    (out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                    encoding="utf-8", newline="\n")
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fortunes-dir", type=Path,
                        help="the .../usr/share/games/fortunes folder of an unpacked fortunes "
                             ".deb; without it the package is fetched with apt-get download")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output folder (default: the folder of this script, data/demo)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.fortunes_dir:
        stats = build(args.fortunes_dir, args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            stats = build(fetch_fortunes(Path(tmp)), args.out)
    print(json.dumps({"rows": stats["rows"], "corpus": stats["corpus"]}, indent=2))


if __name__ == "__main__":
    main()
