"""Batches of real answers to label by reading (data/judge/LABELLING.md): base, SFT and SFT+KTO
answers to the held-out prompts of one experiment folder, shuffled, under opaque ids (the
annotators do not see which model wrote what), three batches with 20 items of the next batch each
labelled twice (annotator agreement). all.jsonl keeps which model wrote each answer.

    python tools/label_batches.py experiments/<sft_kto on smollm2-135m> /tmp/label
"""

import json
import random
import sys
from pathlib import Path

SHOWN = ("label_id", "safe_prompt", "category", "prompt", "answer")


def main(exp: Path, out: Path) -> None:
    rows = []
    for model in ("base", "sft", "kto"):
        for line in (exp / f"safety-{model}" / "answers.jsonl").read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            rows.append(
                {
                    "model": model,
                    "prompt_id": r["id"],
                    "safe_prompt": r["safe"],
                    "category": r["category"],
                    "prompt": r["prompt"],
                    "answer": r["answer"],
                }
            )
    random.Random(0).shuffle(rows)
    for i, r in enumerate(rows):
        r["label_id"] = f"r{i:03d}"
    out.mkdir(parents=True, exist_ok=True)
    n = len(rows)
    thirds = [rows[i * n // 3 : (i + 1) * n // 3] for i in range(3)]
    for k, part in enumerate(thirds):
        items = part + thirds[(k + 1) % 3][:20]
        text = "".join(json.dumps({f: r[f] for f in SHOWN}, ensure_ascii=False) + "\n" for r in items)
        (out / f"batch{k + 1}.jsonl").write_text(text, encoding="utf-8")
    (out / "all.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{n} answers: batches of {[len(t) + 20 for t in thirds]} in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
