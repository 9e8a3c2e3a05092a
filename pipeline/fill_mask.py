"""Fill-mask, side by side: each model's top-10 guesses for one masked position, the models as columns.

The evaluate stage shows the same held-out lines and positions for both models (chosen from the shards
alone, never from a model); `dapt fill-mask` does it for any text with the mask token in it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from pipeline.masking import IGNORE

MASK = "[MASK]"  # what a user types; replaced by each model's own mask token (<mask> for RoBERTa)


def pick_positions(table: pa.Table, tokenizer, n: int) -> list[tuple[int, int]]:
    """(row, position) of n held-out rows spread evenly over the table, each at one of its masked positions.

    Prefers positions whose true token is a whole word of letters (a guess worth reading), the first such
    in the row; rows without one are used only when there are not enough others. Depends on the shards and
    the tokenizer only, so every model gets the very same questions."""
    if n == 0 or table.num_rows == 0:
        return []
    # Look at an even spread of at most 50 rows per pick, not at a whole (possibly huge) held-out set.
    rows = np.unique(np.linspace(0, table.num_rows - 1, min(table.num_rows, 50 * n)).round().astype(np.int64))
    taken = table.take(pa.array(rows))
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))

    def word(ids: list[int], i: int) -> bool:  # a whole word of 2+ letters: not a piece, not cut in pieces
        after = vocab[ids[i + 1]] if i + 1 < len(ids) else ""
        return len(vocab[ids[i]]) > 1 and vocab[ids[i]].isalpha() and not after.startswith("##")

    good, other = [], []
    for r, ids, row in zip(rows.tolist(), taken.column("input_ids").to_pylist(), taken.column("labels").to_pylist()):
        ids = original_ids(ids, row)
        masked = [i for i, t in enumerate(row) if t != IGNORE]
        words = [i for i in masked if word(ids, i)]
        if words:
            good.append((r, words[0]))
        elif masked:
            other.append((r, masked[0]))
    pool = good if len(good) >= n else sorted(good + other)
    if not pool:
        return []
    return [pool[i] for i in np.unique(np.linspace(0, len(pool) - 1, min(n, len(pool))).round().astype(int))]


def original_ids(input_ids: list[int], labels: list[int]) -> list[int]:
    """The line as it was before masking: the true token wherever one was masked."""
    return [t if t != IGNORE else i for i, t in zip(input_ids, labels)]


@torch.no_grad()
def top_k(model, tokenizer, rows: list[list[int]], positions: list[int], k: int = 10,
          device: str = "cpu") -> list[list[tuple[str, float]]]:
    """The k most probable tokens (and probabilities) at positions[i] of token-id rows[i], for each row."""
    model.eval().to(device)
    out = []
    for start in range(0, len(rows), 32):
        chunk, where = rows[start:start + 32], positions[start:start + 32]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(chunk):
            ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        probs = logits[torch.arange(len(chunk)), torch.tensor(where)].float().softmax(-1)
        p, idx = probs.topk(k, dim=-1)
        for ps, ids_ in zip(p.tolist(), idx.tolist()):
            out.append([(token_text(tokenizer, t), round(q, 5)) for t, q in zip(ids_, ps)])
    return out


def token_text(tokenizer, token_id: int) -> str:
    """How a vocabulary entry reads: 'night', '##ing' (a word piece), ',' -- without the byte-level marks."""
    token = tokenizer.convert_ids_to_tokens(token_id)
    return token if token.startswith("##") else (tokenizer.decode([token_id]).strip() or token)


def held_out_rows(model, tokenizer, table: pa.Table, picks: list[tuple[int, int]], device: str = "cpu") -> dict:
    """fill_mask.json: each picked row with only the picked position masked, its true token and the top-10."""
    rows = table.take(pa.array([r for r, _ in picks], type=pa.int64()))
    ids = [original_ids(i, t) for i, t in zip(rows.column("input_ids").to_pylist(), rows.column("labels").to_pylist())]
    questions = [[tokenizer.mask_token_id if j == pos else t for j, t in enumerate(row)]
                 for row, (_, pos) in zip(ids, picks)]
    guesses = top_k(model, tokenizer, questions, [pos for _, pos in picks], device=device)
    specials = set(tokenizer.all_special_ids) - {tokenizer.mask_token_id}
    return {"rows": [
        {"line": int(line), "text": tokenizer.decode([t for t in q if t not in specials]),
         "target": token_text(tokenizer, row[pos]), "top10": [list(g) for g in guess]}
        for line, q, row, (_, pos), guess in zip(rows.column("line").to_pylist(), questions, ids, picks, guesses)]}


def fill_text(model, tokenizer, text: str, k: int = 10) -> list[list[tuple[str, float]]]:
    """The top-k at every mask of `text` ('[MASK]' or the model's own mask token), in order."""
    ids = tokenizer(text.replace(MASK, tokenizer.mask_token), truncation=True)["input_ids"]
    where = [i for i, t in enumerate(ids) if t == tokenizer.mask_token_id]
    return top_k(model, tokenizer, [ids] * len(where), where, k) if where else []


def side_by_side(columns: dict[str, list[tuple[str, float]]], target: str | None = None) -> str:
    """A plain-text table: rank, then one 'token  probability' column per model; a correct guess gets '*'."""
    width = max([24] + [len(name) + 2 for name in columns])
    lines = ["    " + "".join(f"{name:<{width}}" for name in columns)]
    for rank in range(max(len(c) for c in columns.values())):
        cells = []
        for guesses in columns.values():
            if rank < len(guesses):
                token, p = guesses[rank]
                mark = "*" if target is not None and token == target else " "
                cells.append(f"{mark}{token[:width - 10]:<{width - 10}}{p:7.3f}  ")
            else:
                cells.append(" " * width)
        lines.append(f"{rank + 1:>2}  " + "".join(cells))
    return "\n".join(lines)
