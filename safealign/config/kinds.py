"""Stage kinds: one table, read by everything that needs to know what a kind is.

A training stage kind is an entry of KINDS below: its recipe section (a config dataclass,
defined next to it), the tool that trains it, the data stage file it learns from, what that
file must hold, whether it trains against a reference model, which trl classes it uses and
which of its logged metrics the report plots. Recipe validation, the planner, the CLI, the row
checks after the data stage, the report and the tests read this table; nothing else names a
kind. Adding a method (docs/adding_a_method.md) is an entry and a config here, a
`templates/trl/<kind>.yaml.j2` and a recipe.

Every kind merges its LoRA adapter into the model it started from (none with
`full_finetune: true`), and the merged model is the next stage's input and its reference.

Online kinds (docs/online.md) learn from the model's own answers, labelled by the experiment's
safety judge: kto_iter and dpo_iter run `rounds` of sample -> judge -> one KTO (DPO) round, each
round its own store stage (`online`: the offline kind a round trains); grpo is trl's GRPOTrainer
with rewards built from the judge (`rewards`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional, Union

AUTO = "auto"
NATIVE = "native"  # bf16: where this machine computes it natively (a bf16 GPU, a CPU with AVX512-BF16 or AMX)
# the dtype a model answers in (eval.safety.dtype, data.generate.<role>.dtype), read by
# safealign/models/load.py's inference_dtype: saved (the weights' own) or native (bf16 where native)
ANSWER_DTYPES = ("saved", NATIVE)
ADAPTERS = ("lora", "qlora")
ATTENTION = (AUTO, "eager", "sdpa", "flash_attention_2")


def since(default, version: str = "0.2"):
    """A field added after stage names were published: it enters a stage's identity only when it
    differs from `default` (which reproduces the earlier behaviour), so existing stages keep
    their names (tests/fixtures/stage_names.json). safealign.config.recipe.identity reads the marker."""
    if isinstance(default, (dict, list)) or dataclasses.is_dataclass(default):  # a fresh copy per recipe
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"since": version, "default": default})
    return field(default=default, metadata={"since": version, "default": default})


# trl 1.9.0's DPOConfig.loss_type values
DPO_LOSSES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)


# ----------------------------------------------------------------------------- shared settings
@dataclass
class LoraCfg:
    lora_r: int = 16  # adapter rank: higher learns more, costs memory and overfits small data
    lora_alpha: int = 32  # scale = alpha / r
    lora_dropout: float = 0.05
    lora_target_modules: Union[str, list] = "all-linear"  # "all-linear" or a list of module names


@dataclass
class TrainCfg(LoraCfg):
    learning_rate: float = 2e-4  # LoRA tolerates far higher rates than full fine-tuning
    lr_scheduler: str = "cosine"  # any transformers scheduler name
    warmup_ratio: float = 0.1  # share of the optimiser steps spent warming up the learning rate
    num_epochs: float = 1.0  # ignored when max_steps > 0
    max_steps: int = -1  # > 0 caps training at this many optimiser steps (tiny runs, smoke tests)
    micro_batch_size: int = 8  # per-device batch; raise until memory runs out
    gradient_accumulation_steps: int = 1  # effective batch = micro_batch_size x this x devices
    max_length: int = 512  # prompt + completion tokens; longer prompts are cut from the left
    logging_steps: int = 1
    weight_decay: float = 0.0
    optimizer: str = "adamw_torch"
    gradient_checkpointing: bool = False  # saves activation memory for ~30% more compute
    # auto: bf16 where the GPU supports it, fp32 on CPU; native: also bf16 on a CPU with AVX512-BF16/AMX
    bf16: Union[bool, str] = AUTO
    full_finetune: bool = False  # True: train all weights instead of a LoRA adapter (no merge step)
    # qlora: the frozen base loads in 4-bit NF4 (bitsandbytes, CUDA) and the adapter trains in bf16:
    # an 8B model fits a 24 GB card, ~30% slower than lora; the merge reloads the base in bf16
    adapter: str = since("lora")
    # auto: flash_attention_2 on a GPU where flash-attn is installed, else sdpa; the model's own
    # default on a CPU. flash_attention_2 is fastest and required for SFT sample packing
    attn_implementation: str = since(AUTO)
    # Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy): ~20% faster,
    # much less logit memory on a GPU; auto: on where liger-kernel is installed and CUDA is present
    liger: Union[bool, str] = since(False)


# ----------------------------------------------------------------------------- each kind's settings
@dataclass
class SftCfg(TrainCfg):
    train_on_inputs: bool = False  # False: loss on assistant turns only
    sample_packing: bool = False  # packs short rows together: faster on GPU, needs flash-attention


@dataclass
class KtoCfg(TrainCfg):
    learning_rate: float = 5e-5
    beta: float = 0.1  # strength of the implicit KL constraint to the reference (SFT) model
    desirable_weight: float = 1.0  # lambda_D; KTO paper: keep lambda_D*n_D / (lambda_U*n_U) in [1, 4/3]
    undesirable_weight: float = 1.0  # lambda_U
    precompute_ref_log_probs: bool = False  # True: one pass of the reference up front, no reference model in memory
    paired_only: bool = False  # True: unsafe prompts only ("symmetric" KTO); False: safe (unpaired) rows too
    # The study's modifications (docs/kto_variants.md); all off = trl's KTOTrainer itself.
    signed_kl: bool = False  # KTO-S: the KL reference point enters with the sign of the reward
    nll_alpha: float = 0.0  # > 0 adds alpha * NLL of desirable completions (logged as nll_loss)
    length_normalize: bool = False  # per-token mean log-probs; rewards shrink ~length-fold, so raise beta


@dataclass
class DpoCfg(TrainCfg):
    learning_rate: float = 5e-5
    beta: float = 0.1
    loss_type: list = field(default_factory=lambda: ["sigmoid"])  # trl loss names, e.g. [sigmoid, sft]
    loss_weights: Optional[list] = None  # one weight per loss_type entry
    label_smoothing: float = 0.0  # robust DPO's assumed label-noise rate, in [0, 0.5)
    precompute_ref_log_probs: bool = False
    # LD-DPO (length-desensitised): the weight of the log-probabilities of the tokens past the
    # shorter answer's length, in [0, 1]; lower removes more of DPO's pull towards longer answers;
    # 1.0 or null: plain DPO
    ld_alpha: Optional[float] = since(None, "0.4")


@dataclass
class OrpoCfg(TrainCfg):
    learning_rate: float = 8e-6
    beta: float = 0.1  # lambda: weight of the odds-ratio term beside the NLL of the chosen answers


@dataclass
class SimpoCfg(TrainCfg):
    learning_rate: float = 1e-6
    beta: float = 2.0  # reward scale on the length-normalised log-probabilities (SimPO paper: 2 to 2.5)
    simpo_gamma: float = 0.5  # target reward margin between chosen and rejected
    cpo_alpha: float = 0.0  # > 0 adds alpha * NLL of the chosen answers (CPO-SimPO); 0 is SimPO itself


@dataclass
class BcoCfg(TrainCfg):
    learning_rate: float = 5e-5
    beta: float = 0.1  # strength of the implicit KL constraint to the reference model
    precompute_ref_log_probs: bool = False


# ----------------------------------------------------------------------------- online kinds
@dataclass
class OnlineCfg:
    """What an iterative (online) kind adds to the offline kind each of its rounds trains."""

    rounds: int = (
        2  # sample -> judge -> train rounds; each round is its own stage (a longer run reuses the earlier ones)
    )
    prompts_per_round: int = 64  # training prompts answered per round (0: all), drawn per round by the seed
    samples_per_prompt: int = (
        4  # answers sampled per prompt: more gives more contrast per prompt, costs generation time
    )
    temperature: float = 1.0  # sampling temperature: lower samples fewer, more typical answers (less to contrast)
    top_p: float = 1.0  # nucleus sampling
    max_new_tokens: int = 64  # answer budget per sample (real model: 256)
    probe_prompts: int = 32  # safe training prompts kept out of sampling, answered greedily after each round
    # stop the run when a round raises the probe's false-refusal rate by more than this (0.2 = 20
    # points) over the model it started from: the reward-hacking guard (earlier rounds are kept)
    max_false_refusal_jump: float = 0.2


# what only an online stage's driver reads, not its rounds: out of the rounds' identities
DRIVER_ONLY = ("rounds", "max_false_refusal_jump")


@dataclass
class KtoIterCfg(KtoCfg, OnlineCfg):
    """Iterative KTO: each round, every sampled answer labelled by the judge is an unpaired KTO row."""


@dataclass
class DpoIterCfg(DpoCfg, OnlineCfg):
    """Iterative DPO: each round, per prompt, the best desirable vs the worst undesirable sample."""

    # a prompt whose samples are all undesirable is paired with the data's own preferred answer
    # (its refusal or helpful answer) as the chosen one; false: such prompts give no pair
    reference_fallback: bool = True


# The judge-derived rewards GRPO sums (their weights in the recipe; each is logged apart by trl as
# rewards/<name>/mean). safealign/train/online.py defines them.
REWARDS = ("refusal", "helpful", "similarity", "degenerate")


@dataclass
class GrpoCfg(TrainCfg):
    learning_rate: float = 1e-5
    beta: float = 0.04  # KL penalty to the reference (the input model); 0 drops the reference entirely
    num_generations: int = 4  # answers sampled per prompt (the group its advantages are computed in)
    max_completion_length: int = 64  # answer budget per sample (real model: 256-512)
    temperature: float = 1.0  # sampling temperature of the answers the policy learns from
    prompts: int = 0  # training prompts used (0: all), drawn by the seed; unsafe and safe alike
    # reward weights: refusal on unsafe prompts (1 refused - P(toxic)), a non-refusal on safe ones
    # (1 - P(toxic), 0 if refused), MiniLM similarity to the base model's answer on safe ones, and
    # -1 for a degenerate answer (empty, one word repeated) on any prompt
    reward_weights: dict = field(
        default_factory=lambda: {"refusal": 1.0, "helpful": 1.0, "similarity": 0.5, "degenerate": 1.0}
    )
    use_vllm: Union[bool, str] = AUTO  # auto: vLLM's colocated generation where installed with a GPU


# ----------------------------------------------------------------------------- per-kind checks
def _check_kto(cfg: KtoCfg, where: Callable, problems: list[str]) -> None:
    if cfg.micro_batch_size < 2:
        problems.append(
            f"{where(('micro_batch_size',))}: KTO estimates its KL reference point from "
            "mismatched pairs within each device's batch; trl needs micro_batch_size >= 2 "
            f"(gradient accumulation does not count), got {cfg.micro_batch_size}"
        )


def _check_dpo(cfg: DpoCfg, where: Callable, problems: list[str]) -> None:
    if cfg.ld_alpha is not None and (isinstance(cfg.ld_alpha, bool) or not 0.0 <= cfg.ld_alpha <= 1.0):
        problems.append(
            f"{where(('ld_alpha',))}: expected a number in [0, 1] or null (plain DPO), got {cfg.ld_alpha!r}"
        )
    for i, loss in enumerate(cfg.loss_type):
        if loss not in DPO_LOSSES:
            close = difflib.get_close_matches(str(loss), DPO_LOSSES, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"trl 1.9 knows {', '.join(DPO_LOSSES)}"
            problems.append(f"{where(('loss_type',))}: entry {i + 1} {loss!r} is not a trl DPO loss ({hint})")
    for i, w in enumerate(cfg.loss_weights or []):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
            problems.append(f"{where(('loss_weights',))}: entry {i + 1} must be a number > 0, got {w!r}")
    if cfg.loss_weights is not None and len(cfg.loss_weights) != len(cfg.loss_type):
        problems.append(
            f"{where(('loss_weights',))}: {len(cfg.loss_weights)} weights for {len(cfg.loss_type)} loss types"
        )


def kto_weight_advice(
    n_desirable: int, n_undesirable: int, desirable_weight: float, undesirable_weight: float
) -> str | None:
    """The KTO paper (Ethayarajh et al. 2024, eq. 8) recommends
    lambda_D * n_D / (lambda_U * n_U) in [1, 4/3]. None when inside, else advice with numbers."""
    if not n_desirable or not n_undesirable:
        return (
            f"KTO data has {n_desirable} desirable and {n_undesirable} undesirable rows: with one class "
            "missing there is nothing to contrast"
        )
    ratio = desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
    if 1.0 <= ratio <= 4 / 3:
        return None
    lo_u, hi_u = (
        desirable_weight * n_desirable / (n_undesirable * 4 / 3),
        desirable_weight * n_desirable / n_undesirable,
    )
    lo_d, hi_d = (
        undesirable_weight * n_undesirable / n_desirable,
        undesirable_weight * n_undesirable * 4 / 3 / n_desirable,
    )
    return (
        f"weighted desirable:undesirable = {desirable_weight:g} x {n_desirable} / ({undesirable_weight:g} x "
        f"{n_undesirable}) = {ratio:.2f}, outside the KTO paper's recommended [1, 1.33]; e.g. "
        f"undesirable_weight in [{lo_u:.2f}, {hi_u:.2f}] or desirable_weight in [{lo_d:.2f}, {hi_d:.2f}]"
    )


def _kto_advice(cfg: KtoCfg, rows: list[dict]) -> list[str]:
    """The KTO paper's class-weight advice (eq. 8) for the rows this stage trains on."""
    n_d = sum(bool(r["label"]) for r in rows)
    advice = kto_weight_advice(n_d, len(rows) - n_d, cfg.desirable_weight, cfg.undesirable_weight)
    return [advice] if advice else []


def _check_online(cfg: OnlineCfg, where: Callable, problems: list[str]) -> None:
    for key in ("rounds", "samples_per_prompt", "max_new_tokens"):
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            problems.append(f"{where((key,))}: expected a whole number >= 1, got {v!r}")
    for key in ("prompts_per_round", "probe_prompts"):
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            problems.append(
                f"{where((key,))}: expected a whole number >= 0 (0: {'all' if key == 'prompts_per_round' else 'no probe'}), got {v!r}"
            )
    if not 0.0 <= cfg.max_false_refusal_jump <= 1.0:
        problems.append(
            f"{where(('max_false_refusal_jump',))}: a rise of the probe's false-refusal rate in [0, 1] "
            f"(0.2 = 20 points), got {cfg.max_false_refusal_jump!r}"
        )
    if not cfg.temperature > 0 or not 0.0 < cfg.top_p <= 1.0:
        problems.append(
            f"{where(('temperature',))}: online rounds sample: temperature > 0 and top_p in (0, 1], "
            f"got {cfg.temperature!r} and {cfg.top_p!r}"
        )


def _check_kto_iter(cfg: KtoIterCfg, where: Callable, problems: list[str]) -> None:
    _check_kto(cfg, where, problems)
    _check_online(cfg, where, problems)


def _check_dpo_iter(cfg: DpoIterCfg, where: Callable, problems: list[str]) -> None:
    _check_dpo(cfg, where, problems)
    _check_online(cfg, where, problems)
    if cfg.samples_per_prompt < 2 and not cfg.reference_fallback:
        problems.append(
            f"{where(('samples_per_prompt',))}: DPO pairs two samples of one prompt; 1 sample needs "
            "reference_fallback: true"
        )


def _check_grpo(cfg: GrpoCfg, where: Callable, problems: list[str]) -> None:
    if isinstance(cfg.num_generations, bool) or not isinstance(cfg.num_generations, int) or cfg.num_generations < 2:
        problems.append(
            f"{where(('num_generations',))}: GRPO's advantages compare answers within a group: >= 2, got {cfg.num_generations!r}"
        )
    elif (cfg.micro_batch_size * cfg.gradient_accumulation_steps) % cfg.num_generations:
        problems.append(
            f"{where(('micro_batch_size',))}: trl generates num_generations answers per prompt within a batch: "
            f"micro_batch_size x gradient_accumulation_steps ({cfg.micro_batch_size} x {cfg.gradient_accumulation_steps}) "
            f"must be a multiple of num_generations {cfg.num_generations}"
        )
    if not isinstance(cfg.reward_weights, dict) or not cfg.reward_weights:
        problems.append(
            f"{where(('reward_weights',))}: a mapping of {', '.join(REWARDS)} to weights, got {cfg.reward_weights!r}"
        )
        return
    for name, w in cfg.reward_weights.items():
        if name not in REWARDS:
            close = difflib.get_close_matches(str(name), REWARDS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"rewards: {', '.join(REWARDS)}"
            problems.append(f"{where(('reward_weights', name))}: not a reward ({hint})")
        elif isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            problems.append(f"{where(('reward_weights', name))}: a weight >= 0, got {w!r}")
    if not any(isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in cfg.reward_weights.values()):
        problems.append(f"{where(('reward_weights',))}: every weight is 0: nothing to learn from")
    if cfg.use_vllm not in (True, False, AUTO):
        problems.append(f"{where(('use_vllm',))}: expected true, false or 'auto', got {cfg.use_vllm!r}")


def _check_bco(cfg: BcoCfg, where: Callable, problems: list[str]) -> None:
    if cfg.micro_batch_size < 2:
        problems.append(
            f"{where(('micro_batch_size',))}: BCO's reward shift is a running mean over each "
            f"batch; micro_batch_size must be >= 2, got {cfg.micro_batch_size}"
        )


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Kind:
    name: str  # the recipe section and the stage name
    title: str  # for reports
    config: type  # the recipe section's dataclass
    tool: str  # axolotl (SFT) or trl
    data: str  # the data stage's file it learns from: sft, dpo (pairs) or kto (labelled rows)
    needs: str  # what that file must hold: rows, pairs or both labels (checked after the data stage)
    reference: bool  # trains against a frozen reference (the input model: the adapter switched off)
    trainer: str = ""  # trl: "module:Class" of the trainer
    trl_config: str = ""  # trl: "module:Class" of its config
    variant: str = ""  # "module:Class" of safealign's trainer that takes `variant:` (e.g. SafeKTOTrainer)
    plots: tuple = ("loss",)  # logged metrics the report and the comparison plot
    curves: dict = field(default_factory=dict)  # axis labels of metrics only this kind logs: {key: (label, unit)}
    report_keys: tuple = ("learning_rate", "max_steps")  # recipe keys in the report's recipe table
    check: Optional[Callable] = None  # kind-specific recipe checks: check(cfg, where, problems)
    advice: Optional[Callable] = None  # warnings before training: advice(cfg, rows) -> [str]
    online: str = ""  # an iterative kind: the offline kind each of its rounds trains (its templates and trainer)
    rewards: str = ""  # "module:function" that builds a reward-trained kind's reward functions (GRPO)
    runner: str = "run_training"  # its runner in safealign/run/stages.py (plan/codedeps.py reads it)

    @property
    def loss_falls(self) -> bool:
        """Whether a healthy run's loss falls (eval/health.py). Not for a kind that learns from its
        own samples: an online round starts at its reference on the model's own answers (KTO's loss
        0.5, DPO's log 2), and GRPO's loss is mostly beta x KL to the reference, 0 at the start and
        growing as the policy moves (1e-4 on smollm2: 0.03 -> 0.04 over 30 steps)."""
        return not (self.online or self.rewards)

    @property
    def judged(self) -> bool:
        """Whether it learns from the safety judge's verdicts (so the judge stage comes first)."""
        return bool(self.online or self.rewards)

    def data_file(self, cfg) -> str:
        if self.data == "prompts":  # the data stage's canonical rows: prompts with their safe flag
            return "train.jsonl"
        if self.data == "kto" and getattr(cfg, "paired_only", False):
            return "kto_paired.jsonl"  # "symmetric" KTO: unsafe prompts only
        return f"{self.data}.jsonl"

    @property
    def preference(self) -> bool:
        return self.data != "sft"

    def templates(self) -> list[str]:
        """Template files (under templates/) that render this kind's stage folder."""
        if self.online:  # each round renders the offline kind's files
            return KINDS[self.online].templates()
        if self.tool == "axolotl":
            return [f"axolotl/{self.name}.yaml.j2"]
        return [
            "trl/train.py.j2",
            f"trl/{self.name}.yaml.j2",
            "trl/_model.yaml.j2",
            "trl/_train_args.yaml.j2",
            "trl/_lora.yaml.j2",
        ]


# an iterative kind's recipe keys in the report (its rounds' settings, then the offline kind's)
ONLINE_REPORT_KEYS = (
    "rounds",
    "prompts_per_round",
    "samples_per_prompt",
    "temperature",
    "beta",
    "learning_rate",
    "max_steps",
)
PREFERENCE_PLOTS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins")
KINDS = {
    k.name: k
    for k in (
        Kind(
            "sft",
            "SFT",
            SftCfg,
            "axolotl",
            data="sft",
            needs="rows",
            reference=False,
            report_keys=("learning_rate", "max_steps", "micro_batch_size", "lora_r"),
        ),
        Kind(
            "kto",
            "KTO",
            KtoCfg,
            "trl",
            data="kto",
            needs="labels",
            reference=True,
            trainer="trl:KTOTrainer",
            trl_config="trl:KTOConfig",
            variant="safealign.train.kto:SafeKTOTrainer",
            plots=(*PREFERENCE_PLOTS, "kl", "nll_loss"),
            check=_check_kto,
            advice=_kto_advice,
            report_keys=(
                "beta",
                "learning_rate",
                "max_steps",
                "desirable_weight",
                "undesirable_weight",
                "paired_only",
                "signed_kl",
                "nll_alpha",
                "length_normalize",
            ),
        ),
        Kind(
            "dpo",
            "DPO",
            DpoCfg,
            "trl",
            data="dpo",
            needs="pairs",
            reference=True,
            trainer="trl:DPOTrainer",
            trl_config="trl:DPOConfig",
            plots=PREFERENCE_PLOTS,
            check=_check_dpo,
            report_keys=("beta", "learning_rate", "max_steps", "loss_type"),
        ),
        Kind(
            "orpo",
            "ORPO",
            OrpoCfg,
            "trl",
            data="dpo",
            needs="pairs",
            reference=False,
            trainer="trl.experimental.orpo:ORPOTrainer",
            trl_config="trl.experimental.orpo:ORPOConfig",
            plots=(*PREFERENCE_PLOTS, "nll_loss", "log_odds_ratio"),
            report_keys=("beta", "learning_rate", "max_steps"),
            curves={"log_odds_ratio": ("log odds ratio, chosen over rejected", "log odds")},
        ),
        Kind(
            "simpo",
            "SimPO",
            SimpoCfg,
            "trl",
            data="dpo",
            needs="pairs",
            reference=False,
            trainer="trl.experimental.cpo:CPOTrainer",
            trl_config="trl.experimental.cpo:CPOConfig",
            plots=PREFERENCE_PLOTS,
            report_keys=("beta", "simpo_gamma", "cpo_alpha", "learning_rate", "max_steps"),
        ),
        Kind(
            "bco",
            "BCO",
            BcoCfg,
            "trl",
            data="kto",
            needs="labels",
            reference=True,
            trainer="trl.experimental.bco:BCOTrainer",
            trl_config="trl.experimental.bco:BCOConfig",
            plots=(*PREFERENCE_PLOTS, "delta"),
            check=_check_bco,
            report_keys=("beta", "learning_rate", "max_steps"),
            curves={"delta": ("reward shift delta (running mean of rewards)", "nats")},
        ),
        Kind(
            "kto_iter",
            "iterative KTO",
            KtoIterCfg,
            "trl",
            data="prompts",
            needs="prompts",
            reference=True,
            trainer="trl:KTOTrainer",
            trl_config="trl:KTOConfig",
            variant="safealign.train.kto:SafeKTOTrainer",
            plots=(*PREFERENCE_PLOTS, "kl"),
            check=_check_kto_iter,
            online="kto",
            runner="run_online",
            report_keys=ONLINE_REPORT_KEYS,
        ),
        Kind(
            "dpo_iter",
            "iterative DPO",
            DpoIterCfg,
            "trl",
            data="prompts",
            needs="prompts",
            reference=True,
            trainer="trl:DPOTrainer",
            trl_config="trl:DPOConfig",
            plots=PREFERENCE_PLOTS,
            check=_check_dpo_iter,
            online="dpo",
            runner="run_online",
            report_keys=ONLINE_REPORT_KEYS,
        ),
        Kind(
            "grpo",
            "GRPO",
            GrpoCfg,
            "trl",
            data="prompts",
            needs="prompts",
            reference=True,
            trainer="trl:GRPOTrainer",
            trl_config="trl:GRPOConfig",
            rewards="safealign.train.online:judge_rewards",
            runner="run_grpo",
            plots=("loss", "reward", *(f"rewards/{n}/mean" for n in REWARDS), "kl"),
            check=_check_grpo,
            report_keys=("num_generations", "beta", "learning_rate", "max_steps", "reward_weights"),
            curves={
                "reward": ("mean reward (weighted sum)", "reward"),
                **{f"rewards/{n}/mean": (f"{n} reward", "reward") for n in REWARDS},
            },
        ),
    )
}
NAMES = tuple(KINDS)

# The stages every experiment has besides its training stages, in the order they run.
EVALUATION = ("judge", "leaderboard", "safety", "summary")


def get(name: str) -> Kind:
    """The kind called `name`; a KeyError that lists the kinds otherwise."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a stage kind (kinds: {', '.join(NAMES)})") from None
