"""Every kind of downstream task *learns* on the tiny model, on synthetic tasks built to be learnable from its
own vocabulary (the label is decided by which words occur): the dev metric must beat chance clearly."""

from __future__ import annotations

import json
import random

import pytest
import torch

from pipeline.config import ClassificationTask, FinetuneParams, TaskParams, TripletTask
from pipeline.downstream import finetune_seed
from pipeline.models import load_tokenizer
from pipeline.tasks import load_task

SIZES = {"train": 240, "dev": 90, "test": 90}


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def vocab_words(model_dir, n: int) -> list[str]:
    """n whole words of the tiny tokenizer's vocabulary (each one token), in a fixed order."""
    tokenizer = load_tokenizer(str(model_dir))
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and len(w) >= 4 and tokenizer.tokenize(w) == [w])
    assert len(words) >= n
    return words[:n]


class Words:
    """Disjoint word lists: `topics` groups of `per_topic` words, and filler words that carry no signal."""

    def __init__(self, model_dir, topics: int, per_topic: int, fillers: int = 30):
        words = vocab_words(model_dir, topics * per_topic + fillers)
        self.topic = [words[i * per_topic:(i + 1) * per_topic] for i in range(topics)]
        self.filler = words[topics * per_topic:]

    def fill(self, rng: random.Random, n: int) -> list[str]:
        return [rng.choice(self.filler) for _ in range(n)]

    def sentence(self, rng: random.Random, topic: int | None, signal: int = 1, noise: int = 4) -> str:
        words = self.fill(rng, noise) + ([] if topic is None else rng.sample(self.topic[topic], signal))
        rng.shuffle(words)
        return " ".join(words)


def pair_task(folder, words: Words) -> TaskParams:
    """MNLI-like: a premise and a hypothesis; the label is set by which marker word the hypothesis holds."""
    rng = random.Random(0)
    names = ["entailment", "neutral", "contradiction"]
    for split, n in SIZES.items():
        rows = []
        for _ in range(n):
            y = rng.randrange(3)
            premise, hypothesis = " ".join(words.fill(rng, 6)), words.sentence(rng, y)
            rows.append({"premise": premise, "hypothesis": hypothesis, "gold": names[y]})
        write_jsonl(folder / f"{split}.jsonl", rows)
    return TaskParams(type="classification", classification=ClassificationTask(
        dir=str(folder), text_field="premise", text_pair_field="hypothesis", label_field="gold"))


def topic_task(folder, words: Words) -> TaskParams:
    """Three classes; two of a text's four words name its class."""
    rng = random.Random(4)
    for split, n in SIZES.items():
        rows = [{"text": words.sentence(rng, i % 3, signal=2, noise=2), "label": f"class{i % 3}"} for i in range(n)]
        write_jsonl(folder / f"{split}.jsonl", rows)
    return TaskParams(type="classification", classification=ClassificationTask(dir=str(folder)))


def imbalanced_task(folder, words: Words, class_weights="none") -> TaskParams:
    """10% 'spam'; every spam text holds the cue word, and so do 30% of the 'ham' texts: without class weights
    the best guess for a text with the cue is still 'ham' (27% spam), with 'auto' weights it is 'spam'."""
    rng = random.Random(1)
    cue = words.topic[0][0]
    for split, n in SIZES.items():
        rows = []
        for i in range(n):
            spam = i % 10 == 0
            text = words.fill(rng, 4) + ([cue] if spam or rng.random() < 0.3 else [])
            rng.shuffle(text)
            rows.append({"text": " ".join(text), "label": "spam" if spam else "ham"})
        write_jsonl(folder / f"{split}.jsonl", rows)
    return TaskParams(type="classification",
                      classification=ClassificationTask(dir=str(folder), class_weights=class_weights))


def triplet_task(folder, words: Words, topics: int = 4) -> TaskParams:
    """Anchor and positive share a topic but no word; the negative is from another topic."""
    rng = random.Random(2)
    for split, n in SIZES.items():
        rows = []
        for _ in range(n):
            t, other = rng.sample(range(topics), 2)
            rows.append({"anchor": words.sentence(rng, t, 2), "positive": [words.sentence(rng, t, 2), "and more"],
                         "negative": words.sentence(rng, other, 2)})
        write_jsonl(folder / f"{split}.jsonl", rows)
    return TaskParams(type="triplet", triplet=TripletTask(dir=str(folder)))


def labeled_task(folder, words: Words, topics: int = 4) -> TaskParams:
    """Texts labeled by topic, for batch-hard mining."""
    rng = random.Random(3)
    for split, n in SIZES.items():
        rows = [{"text": words.sentence(rng, i % topics, 2), "label": f"topic{i % topics}"} for i in range(n)]
        rng.shuffle(rows)
        write_jsonl(folder / f"{split}.jsonl", rows)
    return TaskParams(type="triplet", triplet=TripletTask(dir=str(folder), mining="batch_hard", texts_per_label=4))


def run(model, task, **params):
    p = FinetuneParams(**{"seeds": [1], "epochs": 4, "batch_size": 16, "lr": 3e-3, "max_seq_len": 32, **params})
    data = load_task(task, "[SEP]")
    return finetune_seed(str(model), data, p, seed=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: on a shared 2-core machine one thread beats two (syncing threads costs more than the math)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def words(tiny_headless):
    return Words(tiny_headless, topics=4, per_topic=5)


def test_three_class_pair_task_learns(tmp_path, tiny_headless, words):
    result = run(tiny_headless, pair_task(tmp_path / "mnli", words))
    assert result["dev"]["accuracy"] >= 0.75  # chance: 1/3
    assert result["test"]["accuracy"] >= 0.7 and result["test"]["macro_f1"] >= 0.65


@pytest.mark.parametrize("extra", [{}, {"unfreeze_after": 10, "epochs": 12}], ids=["frozen", "unfreeze_after"])
def test_frozen_encoder_with_a_head_learns(tmp_path, tiny_headless, words, extra):
    """The random tiny encoder's mean-pooled features still tell which words occur: a head on them learns."""
    params = {"mode": "frozen", "epochs": 20, "head": "mlp", "head_lr": 1e-2, "batch_size": 32, **extra}
    result = run(tiny_headless, topic_task(tmp_path / "topics", words), **params)
    assert result["dev"]["accuracy"] >= 0.75  # chance: 1/3
    assert result["test"]["accuracy"] >= 0.7


def test_class_weights_raise_the_minority_recall(tmp_path, tiny_headless, words):
    plain = run(tiny_headless, imbalanced_task(tmp_path / "a", words), epochs=6)
    weighted = run(tiny_headless, imbalanced_task(tmp_path / "b", words, class_weights="auto"), epochs=6)
    assert plain["test"]["recall/spam"] <= 0.2  # without weights the rare class is (almost) never predicted
    assert weighted["test"]["recall/spam"] >= 0.8
    assert weighted["test"]["macro_f1"] > plain["test"]["macro_f1"]


def test_explicit_triplet_task_learns(tmp_path, tiny_headless, words):
    result = run(tiny_headless, triplet_task(tmp_path / "t", words))
    assert result["dev"]["accuracy"] >= 0.8  # chance: 1/2
    assert result["test"]["accuracy"] >= 0.8
    assert result["dev"]["accuracy"] >= result["curves"]["dev/accuracy"][0][1] + 0.2  # well above untrained


def test_batch_hard_triplet_task_learns(tmp_path, tiny_headless, words):
    result = run(tiny_headless, labeled_task(tmp_path / "l", words), distance="euclidean", margin=1.0)
    assert result["dev"]["accuracy"] >= 0.8
    assert result["test"]["accuracy"] >= 0.8
    assert result["dev"]["accuracy"] >= result["curves"]["dev/accuracy"][0][1] + 0.2
