"""Run attend and its peers side by side and write the ratios into BENCHMARKS.md.

Each case runs attend and the peer in alternation (A B A B ...) for several rounds,
each run a fresh process, and keeps the median of each side, so that the load of a
shared machine falls on both alike. A ratio above 1 means attend is faster.

Called by bench/compare.sh, which builds attend and the peers' environment first.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"
BEGIN = "<!-- compare:begin -->"
END = "<!-- compare:end -->"


def models_dir():
    return Path(os.environ.get("ATTEND_MODELS", Path.home() / ".cache" / "attend" / "models"))


class Case:
    """One benchmark case: an attend command, a peer command and how to read both.

    `metric` names the JSON field compared; `higher_is_better` says whether it is a
    rate (tokens/s) or a time (ms).
    """

    def __init__(self, group, name, attend_args, peer, peer_args, metric, higher_is_better, peer_metric=None):
        self.group = group
        self.name = name
        self.attend_args = attend_args
        self.peer = peer
        self.peer_args = peer_args
        self.metric = metric
        self.peer_metric = peer_metric or metric
        self.higher_is_better = higher_is_better


def attention_cases(quick, threads):
    cases = []
    lengths = [512] if quick else [512, 2048, 8192, 16384]
    shapes = [(8, 64)] if quick else [(8, 64), (16, 128)]
    dtypes = ["f32"] if quick else ["f32", "bf16"]
    for dtype in dtypes:
        for heads, dim in shapes:
            for n in lengths:
                common = ["--seq-len", str(n), "--heads", str(heads), "--head-dim", str(dim), "--causal",
                          "--dtype", dtype, "--threads", str(threads)]
                cases.append(Case("attention", f"causal {dtype} h{heads} d{dim} N={n}",
                                  ["bench", "attention", "--kv-heads", str(heads), *common, "--json"],
                                  "torch", ["torch_attention.py", *common], "ms", False))
    for n in [4096] if quick else [4096, 32768]:
        common = ["--seq-len", str(n), "--heads", "8", "--head-dim", "64", "--causal", "--window", "511",
                  "--dtype", "f32", "--threads", str(threads)]
        cases.append(Case("attention", f"window 512 f32 h8 d64 N={n}",
                          ["bench", "attention", "--kv-heads", "8", *common, "--json"],
                          "torch", ["torch_attention.py", *common], "ms", False))
    return cases


def decode_cases(quick, threads):
    cases = []
    for kv_len in [1024] if quick else [1024, 8192, 32768]:
        common = ["--heads", "32", "--kv-heads", "8", "--head-dim", "128", "--threads", str(threads)]
        cases.append(Case("decode", f"GQA 32/8 d128 L={kv_len} f32",
                          ["bench", "decode", "--kv-len", str(kv_len), "--dtype", "f32", *common, "--json"],
                          "torch", ["torch_attention.py", "--seq-len", "1", "--kv-len", str(kv_len), *common],
                          "ms", False))
    return cases


def generate_cases(quick, threads):
    cases = []
    models = {
        "SmolLM2-135M Q4_1": models_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf",
        "Gemma-3-270M Q4_K_M": models_dir() / "gemma-3-270m-q4_k_m.gguf",
    }
    prompt, gen = (64, 16) if quick else (512, 128)
    for label, path in models.items():
        for depth in [0] if quick else [0, 4096]:
            common = ["--model", str(path), "--prompt-tokens", str(prompt), "--gen-tokens", str(gen),
                      "--depth", str(depth), "--threads", str(threads)]
            for metric, what in [("prefill_tokens_per_s", f"pp{prompt}"), ("decode_tokens_per_s", f"tg{gen}")]:
                cases.append(Case("generate", f"{label} {what} @ depth {depth}",
                                  ["bench", "generate", *common, "--json"],
                                  "llama.cpp", ["llama_cpp_generate.py", *common], metric, True))
    return cases


def embed_cases(quick, threads):
    folder = models_dir() / "all-MiniLM-L6-v2"
    cases = []
    for batch in [1] if quick else [1, 32]:
        common = ["--batch", str(batch), "--tokens", "128", "--threads", str(threads)]
        cases.append(Case("embed", f"MiniLM batch {batch} x 128 tokens",
                          ["bench", "embed", "--model", str(folder), *common, "--json"],
                          "sentence-transformers", ["st_embed.py", "--model", str(folder), *common],
                          "sentences_per_s", True))
    return cases


def run_json(cmd, timeout):
    """Run one command and return its last stdout line parsed as JSON, or an error string."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    except OSError as err:
        return None, str(err)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"exit {proc.returncode}: {last}"
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1]), None
    except (IndexError, json.JSONDecodeError):
        return None, "no JSON on stdout"


def measure(case, attend, peer_python, rounds, timeout):
    """Alternate attend and peer runs; return the medians (or errors) of both sides."""
    values = {"attend": [], "peer": []}
    errors = {"attend": None, "peer": None}
    for _ in range(rounds):
        sides = [("attend", [str(attend), *case.attend_args], case.metric)]
        if peer_python:
            sides.append(("peer", [peer_python, str(PEERS / case.peer_args[0]), *case.peer_args[1:]],
                          case.peer_metric))
        for side, cmd, metric in sides:
            if errors[side]:
                continue
            result, error = run_json(cmd, timeout)
            if error:
                errors[side] = error
            elif metric not in result:
                errors[side] = f"no field {metric} in {sorted(result)}"
            else:
                values[side].append(float(result[metric]))
    medians = {side: statistics.median(v) if v and not errors[side] else None for side, v in values.items()}
    return medians, errors


def ratio(case, attend_value, peer_value):
    if attend_value is None or peer_value is None or attend_value <= 0 or peer_value <= 0:
        return None
    return attend_value / peer_value if case.higher_is_better else peer_value / attend_value


def machine_limits(attend, threads):
    result, error = run_json([str(attend), "bench", "machine", "--threads", str(threads), "--json"], 600)
    return result, error


def peer_versions(peer_python):
    if not peer_python:
        return "peers not run"
    code = ("import importlib.metadata as m\n"
            "for p in ['torch', 'sentence-transformers', 'llama-cpp-python']:\n"
            "    try: print(p, m.version(p))\n"
            "    except Exception: print(p, 'not installed')\n")
    proc = subprocess.run([peer_python, "-c", code], capture_output=True, text=True)
    return ", ".join(proc.stdout.split("\n")[:3]).strip(", ")


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def unit(case):
    return {"ms": "ms", "prefill_tokens_per_s": "tokens/s", "decode_tokens_per_s": "tokens/s",
            "sentences_per_s": "sentences/s"}[case.metric]


def render(rows, limits, args, versions):
    lines = [BEGIN, "", "## Side by side with the peers", ""]
    lines.append(f"Written by `bench/compare.sh{' --quick' if args.quick else ''}` on "
                 f"{datetime.date.today().isoformat()}, CPU: {cpu_model()}, {args.threads} threads, "
                 f"{args.rounds} alternating rounds per case, medians. Peers: {versions}.")
    lines.append("A ratio above 1 means attend is faster (time ratio peer/attend, or rate ratio attend/peer).")
    lines.append("")
    slower = [r for r in rows if r["ratio"] is not None and r["ratio"] < 1]
    if slower:
        lines.append("### Cases where attend is slower")
        lines.append("")
        for r in slower:
            lines.append(f"- {r['case'].group}: {r['case'].name}: ratio {r['ratio']:.2f}. {cause(r['case'])}")
        lines.append("")
    if limits:
        lines.append(f"Machine limits measured by the same harness: f32 GEMM {limits.get('gemm_gflops', 0):.1f} "
                     f"GFLOP/s, memory copy {limits.get('copy_gb_per_s', 0):.1f} GB/s.")
        lines.append("")
    lines.append("| group | case | attend | peer | peer value | ratio |")
    lines.append("|---|---|---|---|---|---|")
    for r in rows:
        case = r["case"]
        a = f"{r['attend']:.3g} {unit(case)}" if r["attend"] is not None else f"failed: {r['errors']['attend']}"
        if not args.peers:
            p = "not run"
        elif r["peer"] is not None:
            p = f"{r['peer']:.3g} {unit(case)}"
        else:
            p = f"failed: {r['errors']['peer']}"
        q = f"{r['ratio']:.2f}" if r["ratio"] is not None else "n/a"
        lines.append(f"| {case.group} | {case.name} | {a} | {case.peer} | {p} | {q} |")
    lines.append("")
    if args.plot_path:
        lines.append(f"![attention time against sequence length]({args.plot_path})")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def cause(case):
    """The likely cause of a slower case, stated per group; refined by hand after a run."""
    return {
        "attention": "The peer's masked path or kernel tiling differs; see the kernel section for the GEMM-rate fraction.",
        "decode": "Decode is bound by memory bandwidth; compare the KV bytes/s with the copy bandwidth.",
        "generate": "llama.cpp's quantized matmul and graph reuse are mature; see the quantized-products section.",
        "embed": "PyTorch batches the encoder's GEMMs through oneDNN/MKL.",
    }[case.group]


def write_benchmarks(text, path):
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        new = head + text + tail
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def plot(rows, peer_python, out):
    """Plot attention time against N for attend and torch (causal and window), with matplotlib."""
    series = {}
    for r in rows:
        case = r["case"]
        if case.group != "attention" or "h8 d64" not in case.name or "bf16" in case.name:
            continue
        kind = "window 512" if case.name.startswith("window") else "causal"
        n = int(case.name.rsplit("N=", 1)[1])
        for side, label in [("attend", "attend"), ("peer", "torch SDPA")]:
            if r[side] is not None:
                series.setdefault(f"{label} {kind}", []).append((n, r[side]))
    data = json.dumps({k: sorted(v) for k, v in series.items()})
    code = (
        "import json, sys\n"
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "series = json.loads(sys.argv[1])\n"
        "fig, ax = plt.subplots(figsize=(7, 4.5))\n"
        "for name, pts in sorted(series.items()):\n"
        "    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker='o', label=name)\n"
        "ax.set_xscale('log', base=2); ax.set_yscale('log')\n"
        "ax.set_xlabel('sequence length N (8 heads, head_dim 64, f32, batch 1)')\n"
        "ax.set_ylabel('milliseconds per call')\n"
        "ax.grid(True, which='both', alpha=0.3); ax.legend()\n"
        "fig.tight_layout(); fig.savefig(sys.argv[2], dpi=110)\n"
    )
    python = peer_python or sys.executable
    proc = subprocess.run([python, "-c", code, data, str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"warning: plot failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return False
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attend", required=True, help="path of the attend binary")
    p.add_argument("--peer-python", help="python of the peers' environment; omit to run attend only")
    p.add_argument("--quick", action="store_true", help="one small case per group, one round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, help="alternating rounds per case (default 3, 1 with --quick)")
    p.add_argument("--timeout", type=int, default=900, help="seconds allowed for one run")
    p.add_argument("--groups", default="attention,decode,generate,embed")
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="Markdown file to update")
    args = p.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.peers = bool(args.peer_python)

    builders = {"attention": attention_cases, "decode": decode_cases, "generate": generate_cases,
                "embed": embed_cases}
    cases = []
    for group in args.groups.split(","):
        if group not in builders:
            sys.exit(f"error: unknown group '{group}'; choose from {', '.join(builders)}")
        cases += builders[group](args.quick, args.threads)

    limits, error = machine_limits(args.attend, args.threads)
    if error:
        print(f"warning: machine limits not measured: {error}", file=sys.stderr)

    rows = []
    for i, case in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] {case.group}: {case.name}", file=sys.stderr, flush=True)
        medians, errors = measure(case, args.attend, args.peer_python, args.rounds, args.timeout)
        rows.append({"case": case, "attend": medians["attend"], "peer": medians["peer"], "errors": errors,
                     "ratio": ratio(case, medians["attend"], medians["peer"])})
        if errors["attend"]:
            print(f"  attend failed: {errors['attend']}", file=sys.stderr)
        if args.peers and errors["peer"]:
            print(f"  {case.peer} failed: {errors['peer']}", file=sys.stderr)

    out = Path(args.out)
    args.plot_path = None
    if not args.quick and "attention" in args.groups:
        png = out.parent / "bench" / "attention_scaling.png"
        if plot(rows, args.peer_python, png):
            args.plot_path = os.path.relpath(png, out.parent)
    write_benchmarks(render(rows, limits, args, peer_versions(args.peer_python)), out)
    failed = [r for r in rows if r["attend"] is None]
    print(f"wrote {out}: {len(rows)} cases, {len(failed)} failed on the attend side", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
