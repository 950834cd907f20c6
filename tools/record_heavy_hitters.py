#!/usr/bin/env python3
"""Record chapter 11's heavy-hitter (H2O) run: SmolLM2 reads 768 tokens through a HeavyHitterCache(192).

H2O has no one-pass version (see kvlab.streaming), and 576 decode steps take over a minute on two cores, too long
for the chapter, so the package ships the run and tests/test_streaming.py recomputes it. Maintainers only:

    python tools/record_heavy_hitters.py --out run.json                         # a new file
    python tools/record_heavy_hitters.py --out kvlab/data/smollm2_heavy_hitters.json --force   # replace the shipped one
"""

from __future__ import annotations

import argparse
from pydoc_data.topics import topics

import torch

from kvlab import smollm2, streaming

TEXT, N_TOKENS, BUDGET = "execmodel", 768, 192  # chapter 11's text, length and budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = smollm2.load_smollm2()
    ids = tokenizer.encode_batch(topics[TEXT])[:, :N_TOKENS]
    recorded = streaming.record_heavy_hitters(model, ids, BUDGET)
    recorded.settings.update(text=f'pydoc_data.topics["{TEXT}"], first {N_TOKENS} tokens',
                             gguf_sha256=smollm2.file_sha256(smollm2.gguf_path()))
    path = recorded.save(args.out, overwrite=args.force)
    print(f"wrote {path}: perplexity {recorded.run.perplexity:.3f}, past {BUDGET}: "
          f"{recorded.run.perplexity_over(BUDGET):.3f}")


if __name__ == "__main__":
    main()
