"""`SafeKTOTrainer`: trl's KTOTrainer with the study's three modifications as switches.

    signed_kl         KTO-S: the KL reference point enters with the sign of the reward
    nll_alpha         adds alpha * NLL of the desirable completions (logged as `nll_loss`)
    length_normalize  per-token mean instead of sum for every sequence log-prob: policy and
                      reference, matched and KL pairs, live or precomputed

trl 1.9.0 computes the KTO loss inline in `KTOTrainer._compute_loss`, and reduces per-token
log-probs to sequences in three places: there, in `_compute_kl_logps` and in
`compute_ref_log_probs` (used by precompute_ref_log_probs). This class overrides exactly those
three methods and keeps everything else of trl (data preparation, collator, KL pairs, reference
handling through the disabled adapter, optimiser, logging). The maths sits in
`safealign.train.losses`. With every switch off it reproduces trl's loss and training steps
(tests/test_kto_equivalence.py checks both, so an upgrade of trl that drifts is caught).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from accelerate.utils import is_peft_model
from datasets.fingerprint import Hasher
from trl import KTOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import selective_log_softmax, use_adapter

from safealign.train import losses

# batch keys that are not model inputs (the collator's extras)
_NOT_MODEL_INPUTS = {
    "completion_mask",
    "KL_input_ids",
    "KL_attention_mask",
    "KL_completion_mask",
    "KL_token_type_ids",
    "KL_mm_token_type_ids",
    "label",
    "ref_logps",
    "ref_KL_logps",
}


@dataclass
class KTOVariant:
    signed_kl: bool = False
    nll_alpha: float = 0.0
    length_normalize: bool = False

    @property
    def is_plain(self) -> bool:
        return not self.signed_kl and self.nll_alpha == 0 and not self.length_normalize


class SafeKTOTrainer(KTOTrainer):
    def __init__(self, *args, variant: KTOVariant | None = None, **kwargs):
        self.variant = variant or KTOVariant()
        super().__init__(*args, **kwargs)
        if self.use_liger_kernel:
            raise ValueError("SafeKTOTrainer computes its own loss; set use_liger_kernel: false")
        if self.loss_type != "kto":
            raise ValueError(f"SafeKTOTrainer implements loss_type 'kto' only, got {self.loss_type!r}")

    # ------------------------------------------------------------------ log-probs
    def _per_token_logps(self, logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return selective_log_softmax(logits[:, :-1, :], input_ids[:, 1:])

    def _seq_logps(self, logits, input_ids, completion_mask) -> torch.Tensor:
        return losses.sequence_logps(
            self._per_token_logps(logits, input_ids), completion_mask[:, 1:], self.variant.length_normalize
        )

    def _kl_model_inputs(self, batch: dict) -> dict:
        kw = {k: v for k, v in batch.items() if k not in _NOT_MODEL_INPUTS and k not in ("input_ids", "attention_mask")}
        kw["input_ids"], kw["attention_mask"] = batch["KL_input_ids"], batch["KL_attention_mask"]
        for k in ("token_type_ids", "mm_token_type_ids"):
            if f"KL_{k}" in batch:
                kw[k] = batch[f"KL_{k}"]
        return kw

    def _compute_kl_logps(self, model, batch):
        """Sequence log-probs of the mismatched (prompt, completion) pairs, without gradient."""
        if not self.calculate_KL:
            return None
        with torch.no_grad():
            logits = model(**self._kl_model_inputs(batch)).logits
        return self._seq_logps(logits, batch["KL_input_ids"], batch["KL_completion_mask"])

    def _reference_ctx(self):
        """With a peft model and no separate reference, the reference is the model with its
        adapter switched off (the "ref" adapter when one was loaded), as in trl."""
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            return use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
        return contextlib.nullcontext()

    def compute_ref_log_probs(self, model, inputs):
        """Reference log-probs of one padded batch (precompute_ref_log_probs)."""
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            self._reference_ctx(),
        ):
            logits = model(inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            kl = self._compute_kl_logps(model, inputs)
        return self._seq_logps(logits, inputs["input_ids"], inputs["completion_mask"]), kl

    def _precompute_ref_logps(self, dataset, name, batch_size):
        # trl caches precomputed reference log-probs under a key of (data, model, calculate_KL):
        # it does not know the reduction, so a cached sum would be reused for a mean. Add it.
        if self.variant.length_normalize:
            key = Hasher.hash((dataset._fingerprint, "safealign:length_normalize"))
            dataset = dataset.map(lambda b: b, batched=True, new_fingerprint=key)
        return super()._precompute_ref_logps(dataset, name, batch_size)

    # ------------------------------------------------------------------ loss
    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        dev = self.accelerator.device
        batch = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        labels = torch.as_tensor(batch["label"], dtype=torch.bool, device=dev)

        kl_logps = self._compute_kl_logps(model, batch)
        model_inputs = {k: v for k, v in batch.items() if k not in _NOT_MODEL_INPUTS}
        if self.aux_loss_enabled:
            model_inputs["output_router_logits"] = True
        outputs = model(**model_inputs)
        per_token = self._per_token_logps(outputs.logits, batch["input_ids"])
        mask = batch["completion_mask"][:, 1:]
        logps = losses.sequence_logps(per_token, mask, self.variant.length_normalize)

        if self.precompute_ref_logps:
            ref_logps, ref_kl_logps = batch["ref_logps"], batch.get("ref_KL_logps")
        else:
            ref = self.model if self.ref_model is None else self.ref_model
            ref_inputs = {k: v for k, v in model_inputs.items() if k != "output_router_logits"}
            with (
                torch.no_grad(),
                disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
                self._reference_ctx(),
            ):
                ref_kl_logps = self._compute_kl_logps(ref, batch)
                ref_logits = ref(**ref_inputs).logits
            ref_logps = self._seq_logps(ref_logits, batch["input_ids"], batch["completion_mask"])

        if self.calculate_KL:
            kl = self.accelerator.gather_for_metrics(losses.kl_estimate(kl_logps, ref_kl_logps)).mean().clamp(min=0)
        else:
            kl = torch.zeros(1, device=logps.device)
        logratios = logps - ref_logps
        chosen_r, rejected_r = logratios[labels], logratios[~labels]
        per_example = losses.kto_losses(
            chosen_r,
            rejected_r,
            kl,
            self.beta,
            self.desirable_weight,
            self.undesirable_weight,
            signed_kl=self.variant.signed_kl,
        )
        loss = per_example.nanmean()
        if self.variant.nll_alpha:
            nll = losses.desirable_nll(per_token, mask, labels)
            loss = loss + self.variant.nll_alpha * nll
            self._metrics[mode]["nll_loss"].append(self.accelerator.gather_for_metrics(nll.detach()).mean().item())
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss

        self._log_batch(mode, kl, logps, logratios, labels)
        return (loss, outputs) if return_outputs else loss

    def _log_batch(self, mode, kl, logps, logratios, labels) -> None:
        """trl's metric names (kl, rewards/*, logps/*), averaged over all processes' rows."""
        m, gather = self._metrics[mode], self.accelerator.gather_for_metrics
        m["kl"].append(kl.item())
        rewards = self.beta * logratios.detach()
        counts = {}
        for name, sel in (("chosen", labels), ("rejected", ~labels)):
            counts[name] = gather(sel.sum()).sum().item()
            if counts[name]:
                m[f"rewards/{name}"].append(gather(rewards[sel].nansum()).nansum().item() / counts[name])
                m[f"logps/{name}"].append(gather(logps.detach()[sel].nansum()).nansum().item() / counts[name])
        if counts["chosen"] and counts["rejected"]:
            m["rewards/margins"].append(m["rewards/chosen"][-1] - m["rewards/rejected"][-1])
