#!/usr/bin/env python3
"""Record chapter 09's FastGen comparison on SmolLM2: FastGen against a window, sinks and H2O at the same bytes.

SmolLM2 profiles a 256-token prompt of chapter 11's text, then decodes 128 more tokens one step at a time through
each of five caches (the full one included): minutes on two cores, too long for the chapter, which shows this file.
tests/test_fastgen.py recomputes the FastGen row. Maintainers only:

    python tools/record_fastgen.py --out run.json                                 # a new file
    python tools/record_fastgen.py --out kvlab/data/smollm2_fastgen.json --force  # replace the shipped one
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from pydoc_data.topics import topics

import torch

from kvlab import smollm2
from kvlab.fastgen import compare_with_fixed_policies

TEXT, PROMPT, N_TOKENS, THRESHOLD = "execmodel", 256, 384, 0.95  # chapter 11's text; the prompt FastGen profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists() and not args.force:
        raise SystemExit(f"{out} already exists: choose another path, or pass --force to replace it")
    torch.manual_seed(0)
    model, tokenizer = smollm2.load_smollm2()
    ids = tokenizer.encode_batch(topics[TEXT])[:, :N_TOKENS]
    start = time.perf_counter()
    record = compare_with_fixed_policies(model, tokenizer, ids, PROMPT, THRESHOLD)
    record["settings"] = {"text": f'pydoc_data.topics["{TEXT}"], first {N_TOKENS} tokens', "prompt": PROMPT,
                          "threshold": THRESHOLD, "torch": torch.__version__,
                          "gguf_sha256": smollm2.file_sha256(smollm2.gguf_path()),
                          "seconds": round(time.perf_counter() - start)}
    out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    for label, row in record["rows"].items():
        print(f"{label:28} {row['nbytes'] / row['full_nbytes']:6.1%}  top-1 {row['top1_agreement']:6.1%}  "
              f"CE +{row['cross_entropy'] - row['full_cross_entropy']:.4f}")
    print(f"wrote {out} in {record['settings']['seconds']} s")


if __name__ == "__main__":
    main()
