"""SafeKTOTrainer with every switch off is trl's KTOTrainer: same loss on the same batch, same
first training steps. Runs the real trl 1.9 on a small random Llama built here; fails if trl
changes its KTO maths under us."""

import copy
import json

import pytest
import torch
from conftest import REPO  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from trl import KTOConfig, KTOTrainer  # noqa: E402

from safealign.data import rows as data
from safealign.models import tiny as tinymodel  # noqa: E402
from safealign.train.kto import KTOVariant, SafeKTOTrainer  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    rows = data.read_jsonl(REPO / "data" / "sg_safety" / "train.jsonl")
    texts = [t for r in rows for t in (r["prompt"], r["chosen"], r.get("rejected") or "")]
    tok = tinymodel.train_tokenizer(texts + ["user\n\nassistant\n\n"] * 50, 512)
    kto_rows = data.build_stage_rows(rows, seed=3)["kto"][:48]
    ds = Dataset.from_list([{k: r[k] for k in ("prompt", "completion", "label")} for r in kto_rows])
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    policy = LlamaForCausalLM(cfg)
    ref = copy.deepcopy(policy)
    with torch.no_grad():  # a reference that differs, so rewards and KL are not all zero
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return tok, ds, policy, ref


def args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_length=128,
        beta=0.1,
        desirable_weight=1.0,
        undesirable_weight=1.5,
        learning_rate=1e-3,
        max_steps=3,
        logging_steps=1,
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        seed=7,
        save_strategy="no",
        dataset_num_proc=1,
        use_cpu=True,
        disable_tqdm=True,
    )
    return KTOConfig(**{**base, **kw})


def trainers(setup, tmp_path, peft=False, variant=None, **kw):
    tok, ds, policy, ref = setup
    made = []
    for cls, extra in ((KTOTrainer, {}), (SafeKTOTrainer, {"variant": variant or KTOVariant()})):
        torch.manual_seed(11)
        kwargs = dict(
            model=copy.deepcopy(policy),
            args=args(tmp_path / cls.__name__, **kw),
            train_dataset=ds,
            processing_class=tok,
            **extra,
        )
        if peft:
            kwargs["peft_config"] = LoraConfig(
                r=4,
                lora_alpha=8,
                target_modules="all-linear",
                task_type="CAUSAL_LM",
                init_lora_weights=False,
                lora_dropout=0.0,
            )
        else:
            kwargs["ref_model"] = copy.deepcopy(ref)
        made.append(cls(**kwargs))
    return made


def first_batch_loss(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item(), {
            k: v[-1] for k, v in trainer._metrics["train"].items()
        }


@pytest.mark.parametrize("peft", [False, True], ids=["ref_model", "peft_adapter_off"])
@pytest.mark.parametrize("precompute", [False, True], ids=["live_ref", "precomputed_ref"])
def test_same_loss_on_same_batch(setup, tmp_path, peft, precompute):
    trl_t, ours = trainers(setup, tmp_path, peft=peft, precompute_ref_log_probs=precompute)
    (a, ma), (b, mb) = first_batch_loss(trl_t), first_batch_loss(ours)
    assert abs(a - b) < 1e-6, (a, b)
    assert a > 0
    for key in ("kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert mb[key] == pytest.approx(ma[key], abs=1e-6), key
    assert any(abs(ma[k]) > 1e-4 for k in ("rewards/chosen", "rewards/rejected")), "degenerate test batch"
    assert "nll_loss" not in mb, "nll_alpha 0: the trainer adds no NLL term"


def test_nll_alpha_zero_is_the_plain_loss_even_with_the_nll_path_on(setup, tmp_path):
    """SafeKTOTrainer at nll_alpha 0 with another switch on: same loss as that switch alone."""
    _, a = trainers(setup, tmp_path / "a", peft=True, variant=KTOVariant(length_normalize=True, nll_alpha=0.0))
    _, b = trainers(setup, tmp_path / "b", peft=True, variant=KTOVariant(length_normalize=True, nll_alpha=1e-3))
    (la, ma), (lb, mb) = first_batch_loss(a), first_batch_loss(b)
    assert "nll_loss" not in ma and mb["nll_loss"] > 0
    assert lb == pytest.approx(la + 1e-3 * mb["nll_loss"], abs=1e-6) and lb != la


def test_same_first_three_steps(setup, tmp_path):
    trl_t, ours = trainers(setup, tmp_path, peft=True)
    logs = []
    for t in (trl_t, ours):
        t.train()
        logs.append([(h["step"], h["loss"]) for h in t.state.log_history if "loss" in h])
    assert len(logs[0]) == 3 and [s for s, _ in logs[0]] == [1, 2, 3]
    for (sa, la), (sb, lb) in zip(*logs):
        assert sa == sb and abs(la - lb) < 1e-6, logs
    wa = dict(trl_t.model.named_parameters())
    for name, p in ours.model.named_parameters():
        assert torch.allclose(p, wa[name], atol=1e-6), name


def test_variants_change_the_loss_and_log(setup, tmp_path):
    _, plain = trainers(setup, tmp_path / "p", peft=True)
    base, _ = first_batch_loss(plain)
    _, nll = trainers(setup, tmp_path / "n", peft=True, variant=KTOVariant(nll_alpha=0.5))
    loss, m = first_batch_loss(nll)
    assert m["nll_loss"] > 0 and loss == pytest.approx(base + 0.5 * m["nll_loss"], abs=1e-6)
    _, ln = trainers(setup, tmp_path / "l", peft=True, variant=KTOVariant(length_normalize=True))
    loss_ln, m_ln = first_batch_loss(ln)
    assert loss_ln != pytest.approx(base, abs=1e-4)
    assert abs(m_ln["logps/chosen"]) < abs(m["logps/chosen"]), "per-token means are smaller than sums"


def test_kto_s_differs_from_kto_when_kl_is_positive(setup, tmp_path):
    _, plain = trainers(setup, tmp_path / "p")
    base, m = first_batch_loss(plain)
    assert m["kl"] > 0, "the perturbed reference should give z0 > 0"
    _, signed = trainers(setup, tmp_path / "s", variant=KTOVariant(signed_kl=True))
    loss, ms = first_batch_loss(signed)
    assert ms["kl"] == pytest.approx(m["kl"]) and loss != pytest.approx(base, abs=1e-5)


def test_precomputed_reference_is_length_normalised(setup, tmp_path):
    _, ln = trainers(
        setup, tmp_path / "pre", peft=True, precompute_ref_log_probs=True, variant=KTOVariant(length_normalize=True)
    )
    _, live = trainers(setup, tmp_path / "live", peft=True, variant=KTOVariant(length_normalize=True))
    a, _ = first_batch_loss(ln)
    b, _ = first_batch_loss(live)
    assert a == pytest.approx(b, abs=1e-6), "precomputed and live reference disagree under length normalisation"
    json.dumps(ln.train_dataset[0]["ref_logps"])  # a plain float per row


def independent_nll(model, batch) -> tuple[float, float]:
    """The desirable rows' NLL computed here from the model's logits, not by safealign.train.losses:
    (mean over rows of each row's per-token mean, the same tokens pooled into one mean)."""
    ids, mask = batch["input_ids"], batch["completion_mask"][:, 1:].to(torch.float64)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1].to(torch.float64)
    nll = -torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1) * mask
    rows = torch.as_tensor(batch["label"], dtype=torch.bool)
    per_row = nll.sum(-1)[rows] / mask.sum(-1)[rows]
    return per_row.mean().item(), (nll.sum(-1)[rows].sum() / mask.sum(-1)[rows].sum()).item()


def test_trainer_nll_is_the_independently_computed_per_sequence_mean(setup, tmp_path):
    """The NLL the trainer adds, as loss(alpha) - loss(0) on one batch, and the nll_loss it logs,
    against the NLL computed from the model's own logits here."""
    _, t = trainers(setup, tmp_path, peft=True, variant=KTOVariant(nll_alpha=0.5))
    batch = next(iter(t.get_train_dataloader()))
    t.model.train()
    expected, pooled = independent_nll(t.model, batch)
    assert abs(expected - pooled) > 1e-3, "the batch's completion lengths should tell the two means apart"
    with torch.no_grad():
        with_nll = t.compute_loss(t.model, batch).item()
        logged = t._metrics["train"]["nll_loss"][-1]
        t.variant.nll_alpha = 0.0
        without = t.compute_loss(t.model, batch).item()
    assert logged == pytest.approx(expected, rel=1e-5)
    assert (with_nll - without) / 0.5 == pytest.approx(expected, rel=1e-4)


def test_precomputed_reference_cache_is_keyed_by_the_reduction(setup, tmp_path):
    """trl caches precomputed reference log-probs next to an on-disk dataset under a key of (data,
    model, calculate_KL). A length-normalised trainer must not reuse the sums a plain one cached,
    and must reuse its own cache on the next run (a stable key, not a random one)."""
    from datasets import load_from_disk

    tok, ds, policy, ref = setup
    ds.select(range(16)).save_to_disk(str(tmp_path / "data"))
    on_disk = load_from_disk(str(tmp_path / "data"))
    assert on_disk.cache_files, "an on-disk dataset, so trl's cache file names are not random"
    folder = tmp_path / "data"

    def build(variant):
        return SafeKTOTrainer(
            model=copy.deepcopy(policy),
            ref_model=copy.deepcopy(ref),
            args=args(tmp_path / "out", precompute_ref_log_probs=True),
            train_dataset=on_disk,
            processing_class=tok,
            variant=variant,
        )

    def caches():
        return set(folder.glob("cache-*.arrow"))

    plain = build(KTOVariant())
    after_plain = caches()
    sums = torch.tensor(plain.train_dataset["ref_logps"])
    ln = build(KTOVariant(length_normalize=True))
    after_ln = caches()
    means = torch.tensor(ln.train_dataset["ref_logps"])
    assert after_ln > after_plain, "the length-normalised reference got cache files of its own"
    # per-token means, not the cached sums: each row's sum over its completion's tokens is larger
    rows = ln.train_dataset
    n_tokens = torch.tensor(
        [min(len(p) + len(c), 128) - len(p) for p, c in zip(rows["prompt_ids"], rows["completion_ids"])],
        dtype=torch.float32,
    )
    assert torch.allclose(means * n_tokens, sums, rtol=1e-4, atol=1e-4)
    assert (n_tokens > 1).any() and not torch.allclose(means, sums)
    again = build(KTOVariant(length_normalize=True))
    assert caches() == after_ln, "a second length-normalised run reuses the first one's cache"
    assert torch.equal(torch.tensor(again.train_dataset["ref_logps"]), means)
