"""Shared test fixtures: a tiny BERT and WordPiece tokenizer built locally -- nothing comes from a hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

ROOT = Path(__file__).resolve().parent.parent
DEMO_CORPUS = ROOT / "data" / "demo" / "corpus" / "songs-poems.txt"


def build_tiny_model(folder: Path, with_head: bool = True, vocab_size: int = 600) -> Path:
    """A 2-layer, 32-wide BERT and a WordPiece tokenizer trained on the demo corpus, saved as an HF folder.
    with_head=False saves a bare encoder (like the bundled MiniLM), so loading it for MLM needs a fresh head."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForMaskedLM, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train([str(DEMO_CORPUS)], trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                        model_max_length=128)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = BertForMaskedLM(config) if with_head else BertModel(config, add_pooling_layer=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_headless(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert-headless"), with_head=False)


def run_command(capsys, prog: str, main, *argv: str) -> tuple[int, str, str]:
    """Run a `dapt` command in this process, as the console script does (stages.run: known errors -> one line,
    exit 2): its exit status, stdout and stderr. What was printed before the call is dropped."""
    import sys

    from stages import run

    capsys.readouterr()
    old = sys.argv
    sys.argv = [prog, *argv]
    try:
        run(main)
        code = 0
    except SystemExit as stop:
        code = stop.code
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err
