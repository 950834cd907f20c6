"""The `kvlab` command: the course's numbers from a terminal.

    kvlab memory --preset gpt3-175b --batch 16 --seq-len 1024 --dtype fp16
    kvlab generate --prompt h [--no-cache]
    kvlab info
    kvlab bench [--quick] [--out PATH [--force]] [--update-committed]

A mistake in the arguments prints one line and exits with status 2, never a traceback: each count is parsed with
its allowed range (`_count`), so even a 400-digit number is named and refused by argparse before any library call.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

from . import memory

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + message; one line is kinder
        raise _UsageError(message)


class _UsageError(Exception):
    pass


MAX_COUNT = 10**15  # beyond any real layer, head, token or parameter count; bytes stay exact and printable


def _count(minimum: int, maximum: int = MAX_COUNT):
    """An argparse `type` for an int option in [minimum, maximum]: argparse then names the option and the range.

    Checking here, not in the library, keeps a typo such as a 400-digit --seq-len from reaching arithmetic that
    would overflow a float; the library's own checks still hold for values inside the range."""
    def parse(text: str) -> int:
        digits = text.strip().lstrip("+-")
        if digits.isdigit() and len(digits) > 20:  # int() of thousands of digits is refused by Python itself
            raise argparse.ArgumentTypeError(f"must be an int from {minimum:,} to {maximum:,}, "
                                             f"got a {len(digits)}-digit number")
        value = int(text)  # a ValueError here becomes argparse's "invalid int value: 'x'"
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be an int from {minimum:,} to {maximum:,}, got {value:,}")
        return value

    parse.__name__ = "int"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kvlab", description="The KV-cache course's numbers from a terminal.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    mem = commands.add_parser("memory", help="KV-cache bytes of a model (a preset or your own sizes)")
    mem.add_argument("--preset", help=f"one of: {', '.join(memory.MODEL_PRESETS)}")
    mem.add_argument("--n-layer", type=_count(1), help="layers (overrides the preset)")
    mem.add_argument("--hidden", type=_count(1), help="hidden size d_model (overrides the preset)")
    mem.add_argument("--n-head", type=_count(1), help="attention heads (overrides the preset)")
    mem.add_argument("--n-kv-head", type=_count(1), help="key/value heads, < n_head for GQA/MQA (overrides the preset)")
    mem.add_argument("--batch", type=_count(0), default=1)
    mem.add_argument("--seq-len", type=_count(0), required=True)
    mem.add_argument("--dtype", default="fp16", choices=list(memory.DTYPE_BYTES))
    # chapter 06: where the cache sits on a GPU next to the weights
    mem.add_argument("--gpu-gib", type=float, help="GPU memory in GiB: also show weights, room left and what fits")
    mem.add_argument("--params", type=_count(0), help="parameter count for the weights (default: the preset's)")
    mem.add_argument("--weight-dtype", choices=list(memory.DTYPE_BYTES), help="dtype of the weights (default: --dtype)")

    gen = commands.add_parser("generate", help="continue a prompt with the hello model")
    gen.add_argument("--prompt", default="h")
    gen.add_argument("--max-new-tokens", type=_count(1), default=4)
    gen.add_argument("--no-cache", action="store_true", help="recompute every position at every step")

    commands.add_parser("info", help="versions, device and threads")

    # --- benchmarks: the course's speed claims side by side (kvlab.bench) ---
    bench = commands.add_parser("bench", help="measure the course's speed figures in one run: table, JSON, plot")
    bench.add_argument("--quick", action="store_true", help="shorter runs, fewer repeats (CI runs it)")
    bench.add_argument("--out", help="JSON file to write (default: a new kvlab-bench-<plan>-<date>-<time>.json in the "
                                     "current folder); an existing file is refused unless --force")
    bench.add_argument("--plot", help="PNG file to write (default: the JSON's path with .png)")
    bench.add_argument("--no-plot", action="store_true", help="write no PNG")
    bench.add_argument("--force", action="store_true", help="replace an existing --out / --plot file")
    bench.add_argument("--update-committed", action="store_true",
                       help="maintainers: replace the repository's benchmarks/results/latest.json and .png")
    bench.add_argument("--threads", type=_count(1, os.cpu_count() or 1), default=1,
                       help="torch CPU threads for the whole run (default 1, at most this machine's cores)")
    bench.add_argument("--no-transformers", action="store_true", help="skip figure 2 (kvlab vs transformers)")
    return parser


def _memory(args: argparse.Namespace) -> str:
    preset = memory.get_preset(args.preset) if args.preset else None
    sizes = {}
    for field, flag in (("n_layer", "n_layer"), ("d_model", "hidden"), ("n_head", "n_head"),
                        ("n_kv_head", "n_kv_head")):
        value = getattr(args, flag)
        sizes[field] = value if value is not None else getattr(preset, field, None)
    if sizes["n_layer"] is None or sizes["d_model"] is None:
        raise ValueError("give --preset, or both --n-layer and --hidden")
    if sizes["n_kv_head"] is not None and sizes["n_head"] is None:
        raise ValueError("--n-kv-head needs --n-head")
    window = preset.sliding_window if preset else None  # a rolling cache (Mistral) stops growing at its window

    def cache_bytes(batch: int, seq_len: int) -> int:
        return memory.kv_cache_bytes(sizes["n_layer"], batch, memory.cached_tokens(seq_len, window), sizes["d_model"],
                                     memory.bytes_per_element(args.dtype), n_head=sizes["n_head"],
                                     n_kv_head=sizes["n_kv_head"])

    n_bytes, per_token = cache_bytes(args.batch, args.seq_len), cache_bytes(1, 1)
    name = preset.name if preset else "custom model"
    if args.gpu_gib is not None or args.params is not None or args.weight_dtype is not None:
        return _memory_on_gpu(args, sizes, name, preset)
    shape = ", ".join(f"{k}={v}" for k, v in sizes.items() if v is not None)
    return (f"{name} ({shape}), batch {args.batch}, seq_len {args.seq_len}, {args.dtype}"
            f"{memory.window_note(window)}\n"
            f"KV cache: {n_bytes:,} bytes = {memory.format_bytes(n_bytes)}\n"
            f"per token: {per_token:,} bytes = {memory.format_bytes(per_token)}")


def _memory_on_gpu(args: argparse.Namespace, sizes: dict, name: str, preset) -> str:
    """`kvlab memory ... --gpu-gib G`: the same report as chapter 06's calculator (`memory.format_report`)."""
    if args.gpu_gib is None:
        raise ValueError("--params and --weight-dtype need --gpu-gib")
    n_params = args.params if args.params is not None else getattr(preset, "n_params", None)
    if n_params is None:
        raise ValueError("a custom model needs --params (its parameter count) with --gpu-gib")
    report = memory.memory_report(sizes["n_layer"], sizes["d_model"], sizes["n_head"], sizes["n_kv_head"],
                                  args.batch, args.seq_len, args.dtype, gpu_gib=args.gpu_gib, n_params=n_params,
                                  weight_dtype=args.weight_dtype, name=name,
                                  sliding_window=getattr(preset, "sliding_window", None))
    return memory.format_report(report)


def _generate(args: argparse.Namespace) -> str:
    from .generate import generate
    from .hello import load_hello_model

    model, tokenizer = load_hello_model()
    tokens, stats = generate(model, tokenizer.encode_batch(args.prompt), args.max_new_tokens,
                             use_cache=not args.no_cache, return_stats=True)
    mode = "without cache" if args.no_cache else "with cache"
    return (f"{tokenizer.decode(tokens[0])}\n"
            f"[{mode}: {stats.new_tokens} tokens, time to first token {stats.prefill_s * 1e3:.2f} ms, "
            f"{stats.tokens_per_s:.0f} tokens/s]")


def _info(args: argparse.Namespace) -> str:
    import torch

    from . import __version__

    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    return (f"kvlab {__version__}, torch {torch.__version__}, python {platform.python_version()}\n"
            f"device: {device}; CPU threads: {torch.get_num_threads()}")


def _bench(args: argparse.Namespace) -> str:
    """`kvlab bench`: check where to write (`bench.output_paths`), run, print the table, then write JSON and PNG.

    The paths are checked before the run and the table is printed before the files are written, so neither a bad
    path nor a failed write costs the minute and a half of measuring."""
    from . import bench

    plan = "quick" if args.quick else "default"
    paths = bench.output_paths(plan=plan, out=args.out, plot=args.plot, no_plot=args.no_plot, force=args.force,
                               update_committed=args.update_committed)
    results = bench.rounded_results(bench.run_benchmarks(  # the table and plot show what the file holds
        plan, threads=args.threads, progress=True, with_transformers=False if args.no_transformers else None))
    print(f"{bench.format_table(results)}\n{bench.closing_note(results)}", flush=True)
    try:
        written = [bench.save_results(results, paths.json)]
        if paths.png is not None:
            import matplotlib.pyplot as plt

            figure = bench.plot_benchmark(results)
            figure.savefig(paths.png)
            plt.close(figure)
            written.append(str(paths.png))
    except OSError as error:
        raise ValueError(f"could not write {error.filename or paths.json}: {error.strerror}; "
                         f"the table above holds the results") from None
    return f"wrote {', '.join(written)}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `kvlab` console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        print({"memory": _memory, "generate": _generate, "info": _info, "bench": _bench}[args.command](args))
    except (_UsageError, ValueError, TypeError, OverflowError) as error:
        print(f"kvlab: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
