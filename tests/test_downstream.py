"""Downstream fine-tuning on the tiny model: losses and metrics on known values, batching and data order,
frozen / full / unfreeze mechanics, seeds make runs repeatable."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from pipeline.config import FinetuneParams, ParamsError, TaskParams, TripletTask
from pipeline.downstream import (ClassificationModule, Collate, EpochOrder, LabelBatches, Projection,
                                 batch_hard_loss, distance, finetune_seed, loaders, pairwise_distance, phases,
                                 task_features)
from pipeline.features import FeatureCache, pool, pooled_features, tokenize
from pipeline.models import load_encoder, load_tokenizer
from pipeline.tasks import load_task
from tests.test_finetune_learns import (  # noqa: F401 (one_thread, words: fixtures, used by pytest)
    imbalanced_task, labeled_task, one_thread, pair_task, topic_task, words, write_jsonl)


def small_triplets(folder, n=24):
    lines = ["river stone water flows", "night stars moon shine", "bread butter jam breakfast"]
    for split in ("train", "dev", "test"):
        rows = [{"anchor": [lines[i % 3], "line two"], "positive": [lines[i % 3]], "negative": lines[(i + 1) % 3]}
                for i in range(n)]
        write_jsonl(folder / f"{split}.jsonl", rows)
    return TaskParams(type="triplet", triplet=TripletTask(dir=str(folder)))


def test_pool_and_distance():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert torch.allclose(pool(hidden, mask, "mean"), torch.tensor([[2.0, 1.0]]))
    assert torch.allclose(pool(hidden, mask, "cls"), torch.tensor([[1.0, 0.0]]))
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert torch.allclose(distance(a, b, "cosine"), torch.tensor([1.0]))
    assert torch.allclose(distance(a, b, "euclidean"), torch.tensor([5.0]).sqrt())


@pytest.mark.parametrize("how", ["cosine", "euclidean"])
def test_pairwise_distance_matches_distance(how):
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    d = pairwise_distance(x, how)
    expected = torch.stack([distance(x[i].expand_as(x), x, how) for i in range(5)])
    assert torch.allclose(d, expected, atol=1e-5)


def test_batch_hard_loss_takes_the_hardest_pair_and_skips_anchors_without_one():
    x = torch.tensor([[0.0], [1.0], [3.0], [3.5], [10.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2])
    loss, valid = batch_hard_loss(x, labels, "euclidean", margin=0.5)
    # hardest positive / negative distance per anchor: 0: 1 / 3, 1: 1 / 2, 2: .5 / 2, 3: .5 / 2.5, 4: none
    assert valid.tolist() == [True, True, True, True, False]  # label 2 has no positive in the batch
    assert loss.tolist() == pytest.approx([0, 0, 0, 0, 0], abs=1e-5)
    loss, _ = batch_hard_loss(x, labels, "euclidean", margin=3.0)
    assert loss[:4].tolist() == pytest.approx([1.0, 2.0, 1.5, 1.0], abs=1e-5) and loss[4] == 0
    loss.sum().backward()
    assert torch.isfinite(x.grad).all()  # the zero distances on the diagonal do not poison the gradient


def test_projection_starts_as_the_identity():
    x = torch.randn(4, 8)
    for kind in ("linear", "mlp"):
        assert torch.equal(Projection(8, kind)(x), x)


def test_classification_metrics_on_known_predictions(tiny_model):
    module = ClassificationModule(load_encoder(str(tiny_model)), FinetuneParams(), labels=["a", "b", "c"])
    out = {"loss": np.array([0.5, 1.5, 1.0, 1.0]), "pred": np.array([0, 1, 1, 2]), "label": np.array([0, 1, 2, 2])}
    m = module.metrics(out)
    assert m["accuracy"] == 0.75 and m["loss"] == 1.0
    assert m["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    # per class: a P=1 R=1; b P=1/2 R=1 F1=2/3; c P=1 R=1/2 F1=2/3 -> macro 7/9
    assert m["macro_f1"] == pytest.approx(7 / 9)
    assert (m["precision/b"], m["recall/b"], m["recall/c"], m["f1/c"]) == pytest.approx((0.5, 1.0, 0.5, 2 / 3))


def test_class_weights_scale_each_examples_loss(tiny_model):
    encoder = load_encoder(str(tiny_model))
    plain = ClassificationModule(encoder, FinetuneParams(), ["a", "b"]).eval()
    weighted = ClassificationModule(encoder, FinetuneParams(), ["a", "b"], class_weights=[1.0, 4.0]).eval()
    weighted.head.load_state_dict(plain.head.state_dict())
    batch = {"text": torch.randn(3, 32), "labels": torch.tensor([0, 1, 1])}
    p, w = plain.outputs(batch)["loss"], weighted.outputs(batch)["loss"]
    assert torch.allclose(w, p * torch.tensor([1.0, 4.0, 4.0]))


def test_epoch_order_is_a_function_of_seed_and_epoch():
    a, b = EpochOrder(50, seed=3), EpochOrder(50, seed=3)
    first = list(a)
    assert list(b) == first and sorted(first) == list(range(50))
    a.set_epoch(1)
    assert list(a) != first
    assert list(EpochOrder(50, seed=4)) != first


def test_label_batches_hold_pairs_of_several_labels():
    labels = [i % 5 for i in range(53)]
    batches = LabelBatches(labels, batch_size=8, per_label=2, seed=1)
    got = list(batches)
    assert len(got) == len(batches) and sorted(i for b in got for i in b) == list(range(53))
    for batch in got:
        assert len(batch) <= 8
        counts = np.bincount([labels[i] for i in batch], minlength=5)
        assert (counts > 0).sum() >= 2  # negatives in every batch
        assert counts.max() >= 2  # at least one positive pair
    assert list(LabelBatches(labels, 8, 2, seed=1)) == got  # same seed and epoch: same batches
    batches.sampler.set_epoch(1)
    assert list(batches) != got
    with pytest.raises(ParamsError, match="texts_per_label = 5"):
        LabelBatches(labels, batch_size=8, per_label=5, seed=1)


def test_pairs_are_encoded_as_one_sequence(tmp_path, tiny_headless, words):
    data = load_task(pair_task(tmp_path / "p", words), "[SEP]")
    tokenizer = load_tokenizer(str(tiny_headless))
    premise, hypothesis = data.rows["train"][0]["text"]
    batch = Collate(("text",), tokenizer, 32)(data.rows["train"][:2])
    ids = batch["text"]["input_ids"][0].tolist()
    assert ids.count(tokenizer.sep_token_id) == 2 and batch["labels"].shape == (2,)
    assert tokenizer.decode(ids[1:ids.index(tokenizer.sep_token_id)]) == premise
    assert "token_type_ids" not in batch["text"]  # not among this tokenizer's model inputs: not passed
    tokenizer.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]  # as BERT's tokenizer has
    inputs = tokenize(tokenizer, [(premise, hypothesis)], 32)
    first_sep = inputs["input_ids"][0].tolist().index(tokenizer.sep_token_id)
    assert inputs["token_type_ids"][0, :first_sep + 1].max() == 0 and inputs["token_type_ids"][0, -1] == 1


def test_feature_cache_equals_the_encoders_pooled_output(tiny_headless):
    encoder, tokenizer = load_encoder(str(tiny_headless)), load_tokenizer(str(tiny_headless))
    units = ["river stone", ("night stars", "moon"), "river stone", "a much longer line of words than the rest"]
    cache = FeatureCache(encoder, tokenizer, units, 32, "mean")
    assert len(cache.units) == 3  # distinct units only
    with torch.no_grad():
        one = pool(encoder(**tokenize(tokenizer, [units[1]], 32))[0], tokenize(tokenizer, [units[1]], 32)[
            "attention_mask"], "mean")
    assert torch.allclose(cache([units[1]]), one, atol=1e-5)
    assert torch.allclose(pooled_features(encoder, tokenizer, units, 32, "mean", batch_size=1), cache(units), atol=1e-5)


def test_phases():
    assert phases(FinetuneParams(epochs=3)) == [(False, 3)]
    assert phases(FinetuneParams(epochs=3, mode="frozen")) == [(True, 3)]
    assert phases(FinetuneParams(epochs=3, mode="frozen", unfreeze_after=1)) == [(True, 1), (False, 2)]


class CountEncoderCalls(pl.Callback):
    def on_fit_start(self, trainer, pl_module):
        self.calls = 0

        def count(*_):
            self.calls += 1
        pl_module.encoder.register_forward_hook(count)


def test_frozen_mode_trains_only_the_head_on_cached_features(tmp_path, tiny_headless, words):
    data = load_task(topic_task(tmp_path / "t", words), "[SEP]")
    params = FinetuneParams(seeds=[1], epochs=2, mode="frozen", max_seq_len=32)
    before = {k: v.clone() for k, v in load_encoder(str(tiny_headless)).state_dict().items()}
    counter = CountEncoderCalls()
    result = finetune_seed(str(tiny_headless), data, params, 1, callbacks=[counter])
    assert counter.calls == 0  # every epoch read cached features
    after = result["module"].encoder.state_dict()
    # (the pooler, which no pooling here uses, is freshly initialised at each load: the tiny model has none)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("pooler."))
    # the cache: one vector per distinct text, shared by the seeds
    cache = task_features(load_encoder(str(tiny_headless)), load_tokenizer(str(tiny_headless)), data, params)
    texts = {r["text"] for split in data.rows.values() for r in split}
    assert cache.vectors.shape == (len(texts), 32)
    assert finetune_seed(str(tiny_headless), data, params, 1, cache)["test"] == result["test"]


def test_unfreeze_after_trains_the_encoder_in_the_later_epochs(tmp_path, tiny_headless, words):
    data = load_task(topic_task(tmp_path / "t", words), "[SEP]")
    params = FinetuneParams(seeds=[1], epochs=3, mode="frozen", unfreeze_after=2, max_seq_len=32)
    counter = CountEncoderCalls()
    result = finetune_seed(str(tiny_headless), data, params, 1, callbacks=[counter])
    assert counter.calls > 0
    # steps run on across the two phases: dev loss before training and after each of the 3 epochs
    steps = [s for s, _ in result["curves"]["dev/loss"]]
    per_epoch = len(loaders(data, params, None, 1)["train"])
    assert steps == [0, per_epoch, 2 * per_epoch, 3 * per_epoch]


def test_early_stopping_on_dev_loss_tests_the_best_epoch(tmp_path, tiny_headless, words):
    data = load_task(imbalanced_task(tmp_path / "i", words), "[SEP]")
    # a far too high lr: the dev loss gets worse after the first epochs, and patience 1 stops the run
    params = FinetuneParams(seeds=[1], epochs=30, lr=0.5, warmup_ratio=0, patience=1, max_seq_len=32)
    result = finetune_seed(str(tiny_headless), data, params, 1)
    dev = [v for _, v in result["curves"]["dev/loss"]][1:]  # after each epoch run
    assert len(dev) < 30
    assert result["best_epoch"] == int(np.argmin(dev)) and len(dev) == result["best_epoch"] + 2
    assert result["dev"]["loss"] == pytest.approx(min(dev))


@pytest.mark.parametrize("kind", ["triplet", "batch_hard", "classification"])
def test_same_seed_same_result_and_outputs_complete(tmp_path, tiny_headless, words, kind):
    task = {"triplet": lambda: small_triplets(tmp_path / "t"),
            "batch_hard": lambda: labeled_task(tmp_path / "l", words),
            "classification": lambda: imbalanced_task(tmp_path / "c", words, "auto")}[kind]()
    data = load_task(task, "[SEP]", max_train_rows=40)
    params = FinetuneParams(seeds=[3], epochs=2, batch_size=8, lr=1e-3, max_seq_len=16)
    first = finetune_seed(str(tiny_headless), data, params, 3)
    again = finetune_seed(str(tiny_headless), data, params, 3)
    other = finetune_seed(str(tiny_headless), data, params, 4)
    assert first["test"] == again["test"] and first["curves"] == again["curves"]
    assert first["per_example"] == again["per_example"] and first["curves"] != other["curves"]
    assert 0 <= first["test"]["accuracy"] <= 1 and first["best_epoch"] in (0, 1)
    # curves: dev loss before training (step 0) and after each epoch; train loss every step
    per_epoch = len(loaders(data, params, None, 3)["train"])
    assert [s for s, _ in first["curves"]["dev/loss"]] == [0, per_epoch, 2 * per_epoch]
    assert len(first["curves"]["train/loss"]) == 2 * per_epoch
    # per-example test outputs, in test order; their mean is the test loss
    per = first["per_example"]
    assert len(per["loss"]) == len(data.rows["test"]) and np.mean(per["loss"]) == pytest.approx(first["test"]["loss"])
    if kind == "classification":
        assert per["label"] == [r["labels"] for r in data.rows["test"]]
        assert np.mean(np.array(per["pred"]) == per["label"]) == pytest.approx(first["test"]["accuracy"])
    else:
        assert set(per["correct"]) <= {0, 1} and np.mean(per["correct"]) == pytest.approx(first["test"]["accuracy"])


def test_a_diverged_run_is_a_one_line_error(tmp_path, tiny_headless, words):
    data = load_task(topic_task(tmp_path / "t", words), "[SEP]", max_train_rows=32)
    params = FinetuneParams(seeds=[1], epochs=1, lr=1e30, warmup_ratio=0, max_seq_len=16)
    with pytest.raises(ParamsError, match=r"finetune seed 1: the dev loss is not a number .* lower finetune.lr"):
        finetune_seed(str(tiny_headless), data, params, 1)
