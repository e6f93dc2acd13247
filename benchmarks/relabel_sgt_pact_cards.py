"""Relabel committed SGT+PACT model cards written before qsal named a parent's kind (commit d3a1288).

Those cards compared the model against "the FP32 parent", but an SGT+PACT model is fine-tuned from the
saliency-guided (SGT) model of its cell, and the numbers in that comparison are the SGT model's: only the words
were wrong. The cards cannot be written again, because their ONNX files and checkpoints are not in git, so this
script changes the words and nothing else. In each card whose recorded parent is an ``.../sgt/best.safetensors``:

- ``model.card.md``: "parent (FP32)", "Change against the FP32 parent", "minus its FP32 parent", the table's "FP32
  parent" column and the caveat now say SGT / the parent model, as the current card writer does; a closing line says
  when and why the card was relabelled.
- ``model.card.json``: ``metrics.fp32_parent_test`` / ``fp32_parent_scored`` become ``parent_test`` /
  ``parent_scored`` with ``parent_kind: "SGT"`` (the current keys), the caveat is the current one, and
  ``relabelled`` records the change.

Idempotent: a card already relabelled (or written by the current writer) is left alone.

    python benchmarks/relabel_sgt_pact_cards.py [--check]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS  # noqa: E402

from qsal._atomic import write_json_atomic, write_text_atomic  # noqa: E402

OLD_CAVEAT = ("Quantization changes individual predictions and saliency maps even when aggregate metrics agree; the "
              "comparison with the FP32 parent and the map agreement metrics show by how much.")
NEW_CAVEAT = ("Quantization changes individual predictions and saliency maps even when aggregate metrics agree; the "
              "comparison with the parent model and the map agreement metrics show by how much.")
MD_WORDS = [("| parent (FP32) |", "| parent (SGT) |"), ("## Change against the FP32 parent", "## Change against the SGT parent"),
            ("minus its FP32 parent", "minus its SGT parent"), ("| this model | FP32 parent |", "| this model | SGT parent |"),
            (OLD_CAVEAT, NEW_CAVEAT),
            ("rank correlation with the FP32 parent's map", "rank correlation with the plain FP32 model's map"),
            ("with the FP32 parent's map", "with the plain FP32 model's map")]


def stale_cards(root: Path) -> list[Path]:
    """``model.card.json`` files whose parent is an SGT checkpoint and which still use the old FP32 wording."""
    found = []
    for path in sorted(root.rglob("*.card.json")):
        card = json.loads(path.read_text())
        parent = str((card.get("training") or {}).get("parent") or "")
        if parent.endswith("/sgt/best.safetensors") and "fp32_parent_test" in (card.get("metrics") or {}):
            found.append(path)
    return found


def relabel(json_path: Path, today: str) -> None:
    card = json.loads(json_path.read_text())
    metrics = card["metrics"]
    renamed = {("parent_test" if k == "fp32_parent_test" else "parent_scored" if k == "fp32_parent_scored" else k): v
               for k, v in metrics.items()}
    renamed["parent_kind"] = "SGT"
    card["metrics"] = renamed
    card["caveats"] = [NEW_CAVEAT if c == OLD_CAVEAT else c for c in card.get("caveats", [])]
    note = (f"relabelled on {today} by benchmarks/relabel_sgt_pact_cards.py: written before qsal named a parent's "
            "kind, this card called its SGT parent 'FP32'; the numbers are as first written, only the labels changed")
    card["relabelled"] = note
    md_path = json_path.with_name(json_path.name.replace(".card.json", ".card.md"))
    if md_path.is_file():
        md = md_path.read_text()
        for old, new in MD_WORDS:
            md = md.replace(old, new)
        write_text_atomic(md_path, md.rstrip("\n") + f"\n\n_Note: {note}._\n")
    write_json_atomic(json_path, card)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="list the stale cards and exit 1 if there are any")
    args = ap.parse_args()
    stale = stale_cards(RESULTS)
    for path in stale:
        print(path.relative_to(RESULTS.parent.parent))
    if args.check:
        sys.exit(1 if stale else 0)
    today = _dt.date.today().isoformat()
    for path in stale:
        relabel(path, today)
    print(f"relabelled {len(stale)} card(s)")


if __name__ == "__main__":
    main()
