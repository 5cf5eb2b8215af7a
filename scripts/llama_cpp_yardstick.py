"""llama.cpp (llama-cpp-python) on the very token ids rbee's engine bench used: prompt processing,
greedy decode, peak RSS; then the ratios rbee / llama.cpp. A yardstick only, never a dependency.

usage: llama_cpp_yardstick.py MODEL.gguf RBEE_RESULTS.json THREADS
"""
import json
import resource
import sys
import time

from llama_cpp import Llama

RUNS = 5


def median(xs):
    return sorted(xs)[len(xs) // 2]


def main():
    model, results_file, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rbee = json.load(open(results_file))
    llm = Llama(model_path=model, n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)

    def prompt_seconds(tokens):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(tokens)
        return time.perf_counter() - t0

    def decode_tok_s(prompt, n):
        llm.reset()
        llm.eval(prompt)
        t0 = time.perf_counter()
        for _ in range(n - 1):
            token = llm.sample(temp=0.0)
            llm.eval([token])
        return (n - 1) / (time.perf_counter() - t0)

    def first_token_seconds(tokens):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(tokens)
        llm.sample(temp=0.0)
        return time.perf_counter() - t0

    rows = []
    ttft = []
    for label in ("long", "short"):
        tokens = rbee[f"{label}_prompt"]
        tok_s = len(tokens) / median([prompt_seconds(tokens) for _ in range(RUNS)])
        ours = rbee[f"{label}_prompt_tok_s"]
        rows.append((f"prompt processing, {label} prompt ({len(tokens)} tokens)", ours, tok_s))
        theirs_ms = median([first_token_seconds(tokens) for _ in range(RUNS)]) * 1000
        ttft.append((f"time to first token, {label} prompt", rbee[f"{label}_ttft_ms"], theirs_ms))
    n = rbee["decode_tokens"]
    tok_s = median([decode_tok_s(rbee["decode_prompt"], n) for _ in range(RUNS)])
    rows.append((f"decode ({n} tokens, greedy)", rbee["decode_tok_s"], tok_s))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"same tokens, {threads} threads, medians of {RUNS}")
    print("| measure | rbee | llama.cpp | rbee / llama.cpp |\n|---|---|---|---|")
    for name, ours, theirs in rows:
        print(f"| {name} | {ours:.1f} tok/s | {theirs:.1f} tok/s | {ours / theirs:.2f} |")
    for name, ours, theirs in ttft:
        print(f"| {name} | {ours:.0f} ms | {theirs:.0f} ms | {ours / theirs:.2f} (lower is better) |")
    print(f"| peak RSS (llama.cpp: a Python process) | {rbee['peak_rss_mib']:.0f} MiB | {rss:.0f} MiB | {rbee['peak_rss_mib'] / rss:.2f} |")
    single = rbee["streams_1_tok_s"]
    print("\nrbee, concurrent streams in one batch (aggregate decode tok/s)")
    print("| streams | rbee | vs one stream |\n|---|---|---|")
    for n in (1, 2, 4, 8):
        print(f"| {n} | {rbee[f'streams_{n}_tok_s']:.1f} tok/s | {rbee[f'streams_{n}_tok_s'] / single:.2f}x |")


if __name__ == "__main__":
    main()
