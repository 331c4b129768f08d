"""The terminal is for people: per stage a start line, progress bars, a one-line result.

Everything else a stage prints, its libraries' messages included, goes to the stage's log file
(`experiments/<NAME>/logs/<stage>.log`; training's child process: `<stage>/train.log`); with
VERBOSE=1 all of it reaches the terminal as well. Of the log's lines, those that look like a
warning or an error (`is_alarm`) are also shown, so a new warning is never hidden.

Messages known to be harmless are filtered where they are made (`install_filters`): a logging
filter on the one logger that emits each, matching its exact text, or a warnings filter on its
exact message; nothing is silenced wholesale. `HARMLESS` is the one list of them, each with the
reason it is harmless; child processes (Axolotl, the trl scripts, accelerate's workers) install
the same filters at start-up through `safealign/core/site/sitecustomize.py`
(`SITE` on their PYTHONPATH, set by safealign/train/launcher.child_env). VERBOSE=1 installs none.

May import: nothing of safealign (the lowest layer).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import warnings
from pathlib import Path

SITE = Path(__file__).resolve().parent / "site"  # holds sitecustomize.py, for child processes


def verbose() -> bool:
    return os.environ.get("VERBOSE", "") not in ("", "0")


# (where: a logger's name, or "warning:<Category>"; the exact message as a regex; why it is harmless)
HARMLESS: list[tuple[str, str, str]] = [
    (
        "torchao",
        r"Failed to load \S*/torchao/_C\w*\.(cpython-\d+-\S+|abi3)\.so: Could not load this library: \S+",
        "torchao's wheel carries CUDA kernels built for another Python; the CPU path never calls them",
    ),
    (
        "torch.utils._pytree",
        r"<enum '\w+'> is an Enum subclass and is now natively supported by torch\.compile as an opaque "
        r"value type\. Calling register_constant\(\) on Enum subclasses is deprecated and will be an error "
        r"in a future release\.",
        "torchao registers its own enums at import (torchao's to fix); nothing here calls it",
    ),
    (
        "warning:UserWarning",
        r"Skipping publisher trust check for '[^']+' because Hugging Face Hub is in offline mode\.",
        "offline by design: the kernels were checked when they were cached",
    ),
    (
        "bitsandbytes.backends.cpu.ops",
        r"Failed to load CPU gemm_4bit_forward from kernels-community: Version \d+ of "
        r"'kernels-community/quantization-bitsandbytes' is not available in the local cache and Hugging Face "
        r"Hub is in offline mode\. Download the kernel while online first, or pass an explicit "
        r"`revision=<commit>`\.\. Please make sure you already `pip install kernels` and the kernels >= [\d.]+",
        "on AVX512-BF16 CPUs bitsandbytes looks for an optional hub kernel for 4-bit matmuls at import; "
        "offline it uses its own built-in one, and only QLoRA on a CPU calls either",
    ),
    (
        "axolotl.utils.schemas.config",
        r"bf16 requested, but AMP is not supported on this GPU\. Requires Ampere series or above\. Training "
        r"will fail, but other operations \(such as merging\) are still functional\.",
        "said wherever no CUDA GPU is found; safealign's rendered SFT config always names its plugin, "
        "which passes use_cpu there (safealign/train/axolotl_plugin.py): the stage trains under CPU autocast",
    ),
    (
        "DeepSpeed",
        r"Setting accelerator to CPU\. If you have GPU or other accelerator, we were unable to detect it\.",
        "a CPU machine has no accelerator to detect",
    ),
    (
        "warning:UserWarning",
        r"'pin_memory' argument is set as true but no accelerator is found, then device pinned memory "
        r"won't be used\.",
        "pinned memory only speeds up copies to a GPU",
    ),
    (
        "axolotl.utils.data.sft",
        r"Processing datasets during training can lead to VRAM instability\. Please pre-process your "
        r"dataset using `axolotl preprocess path/to/config\.yml`\.",
        "each stage tokenises its rows once and the store keeps the stage: a preprocess step saves nothing",
    ),
    (
        "lm_eval.models.huggingface",
        r"Combined length of context \(\d+\) and continuation \(\d+\) exceeds model's maximum length "
        r"\(\d+\)\. Truncating \d+ tokens from the left\.",
        "lm-eval cuts few-shot contexts to the model's length, one message per request; the stage's "
        "result line counts them",
    ),
    (
        "lm_eval.models.huggingface",
        r"Left truncation applied\. Original sequence length was \d+, truncating to last \d+ tokens\. "
        r"Some content will be lost\.",
        "the generation requests' counterpart of the line above; counted likewise",
    ),
    (
        "transformers.generation.utils",
        r"Both `max_new_tokens` \(=\d+\) and `max_length`\(=\d+\) seem to have been set\. `max_new_tokens` "
        r"will take precedence\..*",
        "lm-eval passes both on purpose; max_new_tokens is the one meant",
    ),
    (
        "transformers.tokenization_utils_base",
        r"Token indices sequence length is longer than the specified maximum sequence length for this "
        r"model \(\d+ > \d+\)\. Running this sequence through the model will result in indexing errors",
        "lm-eval tokenises whole few-shot contexts before it cuts them to the model's length",
    ),
    (
        "lm_eval.evaluator",
        r"generation_kwargs: \{.*\} specified through cli, these settings will update set parameters in "
        r"yaml tasks\. Ensure 'do_sample=True' for non-greedy decoding!",
        "max_gen_toks is the recipe's own setting (eval.leaderboard.tasks.<family>.max_gen_toks)",
    ),
    (
        "trl.trainer.kto_trainer",
        r"You have different amounts of desirable/positive and undesirable/negative examples but the "
        r"weights on the desirable and undesirable losses don't seem to be in an ideal range\. Based on "
        r"your data, we recommend EITHER desirable_weight in \[[\d.]+, [\d.]+\] or undesirable_weight in "
        r"\[[\d.]+, [\d.]+\] \(but NOT BOTH\)\. See the documentation on how to optimally set these weights\.",
        "the same advice, with the same figures, is this project's own warning before each KTO stage or "
        "round (config/kinds.py kto_weight_advice)",
    ),
    (
        "lm_eval.evaluator",
        r"Chat template formatting change affects loglikelihood and multiple-choice tasks\. See "
        r"docs/chat-template-readme\.md for details\.",
        "the chat template is the leaderboard's own setting (apply_chat_template), chosen per family",
    ),
]

_CATEGORIES = {"UserWarning": UserWarning, "FutureWarning": FutureWarning, "DeprecationWarning": DeprecationWarning}
FILTERED: dict[str, int] = {}  # message pattern -> times it was filtered in this process


class _Exact(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern, self.regex = pattern, re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:
            return True
        if self.regex.fullmatch(msg):
            FILTERED[self.pattern] = FILTERED.get(self.pattern, 0) + 1
            return False
        return True


_installed = False


def install_filters() -> None:
    """Filter HARMLESS's messages at their source, in this process (once; none with VERBOSE=1)."""
    global _installed
    if _installed or verbose():
        return
    _installed = True
    for where, pattern, _ in HARMLESS:
        if where.startswith("warning:"):
            category = _CATEGORIES[where.split(":", 1)[1]]
            warnings.filterwarnings("ignore", message=pattern + r"\Z", category=category)
        else:
            logging.getLogger(where).addFilter(_Exact(pattern))
    # a library's warning with no handler of its own would print bare (logging's last resort),
    # which is_alarm cannot tell from any other line: give it its level and logger
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s [%(name)s] %(message)s", level=logging.WARNING)


def filtered_count(logger: str) -> int:
    """How many of `logger`'s HARMLESS messages this process filtered (for a stage's result line)."""
    return sum(n for p, n in FILTERED.items() for w, q, _ in HARMLESS if q == p and w == logger)


_ALARM = re.compile(
    r"Traceback \(most recent call last\)"
    r"|^\s*\[[^\]]*\] \[(WARNING|ERROR|CRITICAL)\]"  # Axolotl's format
    r"|^(WARNING|ERROR|CRITICAL)\b"  # logging's default formats
    r"|^[WE]\d{4} \d\d:\d\d:\d\d"  # torch's (glog) format
    r"|\b\w*(Warning|Error|Exception): "  # warnings.showwarning, an exception's last line
    r"|^\s*(warning|error): ",  # this project's own
    re.I,
)


def is_alarm(line: str) -> bool:
    """Whether a line of a log is a warning or an error, which the terminal shows even when quiet."""
    return bool(_ALARM.search(line))


# ----------------------------------------------------------------------------- the stage's console
_active: Console | None = None


def say(msg: str) -> None:
    """A line for the person at the terminal (and the log); print() when no console is open."""
    if _active is None:
        print(msg, flush=True)
    else:
        _active.say(msg)


def progress(label: str, done: int, total: int | None, unit: str = "") -> None:
    """One progress bar on the terminal, redrawn in place; a newline when done == total."""
    if _active is not None:
        _active.progress(label, done, total, unit)


def bar(done: int, total: int | None, width: int = 24) -> str:
    if not total:
        return f"{done}"
    filled = min(width, round(width * done / total))
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


class Console:
    """While open: this process's stdout and stderr (and so every library's output, at the file
    descriptor level) go to `log_path`; `say` and `progress` write to the terminal; lines of the
    log that `is_alarm` are shown on the terminal too, and every line with VERBOSE=1."""

    def __init__(self, log_path: Path):
        self.log_path = Path(log_path)
        self.verbose = verbose()
        self._last = 0.0
        self._bar_open = False
        self._finished = None  # the last bar drawn to its end: (label, done, total)

    def __enter__(self) -> Console:
        global _active
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.term = open(os.dup(self._saved[0]), "w", encoding="utf-8", errors="replace")
        self.log = open(self.log_path, "w", encoding="utf-8", errors="replace")
        self._lock = threading.Lock()
        r, w = os.pipe()
        os.dup2(w, 1)
        os.dup2(w, 2)
        os.close(w)
        self._reader = threading.Thread(target=self._pump, args=(r,), daemon=True)
        self._reader.start()
        _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        _active = None
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        os.dup2(self._saved[0], 1)  # closes the pipe's write ends: the reader sees the end
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._reader.join(timeout=10)
        self._end_bar()
        self.term.close()
        self.log.close()

    def _pump(self, fd: int) -> None:
        with open(fd, encoding="utf-8", errors="replace", newline="") as f:
            for line in f:  # newline="": a tqdm redraw (\r) is a line of its own
                with self._lock:
                    self.log.write(line)
                    self.log.flush()
                    text = line.rstrip("\r\n")
                    if text.strip() and (self.verbose or is_alarm(text)):
                        self._end_bar()
                        self.term.write(("  | " if self.verbose else "  ") + text.strip("\r") + "\n")
                        self.term.flush()

    def _end_bar(self) -> None:
        if self._bar_open:
            self.term.write("\n")
            self.term.flush()
            self._bar_open = False

    def say(self, msg: str) -> None:
        with self._lock:
            self._end_bar()
            self.term.write(msg + "\n")
            self.term.flush()
            self.log.write(msg + "\n")
            self.log.flush()

    def note(self, msg: str) -> None:
        """A line for the log only (e.g. the error that the command line then prints whole)."""
        with self._lock:
            self.log.write(msg + "\n")
            self.log.flush()

    def progress(self, label: str, done: int, total: int | None, unit: str = "") -> None:
        now = time.time()
        finished = total is not None and done >= total
        if not finished and now - self._last < 0.5:
            return
        if finished and self._finished == (label, done, total):
            return  # that bar is finished on the terminal already (a caller's closing call)
        self._finished = (label, done, total) if finished else None
        self._last = now
        with self._lock:
            self.term.write(f"\r  {label} {bar(done, total)}{' ' + unit if unit else ''}")
            self._bar_open = True
            if finished:
                self._end_bar()
            self.term.flush()
