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

    `metrics` lists the JSON fields compared, each a row of the table, read from the
    same pair of runs because generate prints prefill and decode rates at once.
    `higher_is_better` is true for rates (tokens/s) and false for times (ms). `slow`
    cases run `--slow-rounds` rounds instead of `--rounds`. `limit(result, limits,
    metric)` returns attend's fraction of a machine limit for one run, or None.
    """

    def __init__(self, group, name, attend_args, peer, peer_args, metrics, higher_is_better,
                 slow=False, limit=None):
        self.group = group
        self.name = name
        self.attend_args = attend_args
        self.peer = peer
        self.peer_args = peer_args
        self.metrics = metrics
        self.higher_is_better = higher_is_better
        self.slow = slow
        self.limit = limit


def field_fraction(field, limit_name):
    """Return a limit function that reads attend's own fraction `field` of a baseline it
    measured in the same process with the code of `attend bench machine`, so that the
    kernel and its baseline see the same load."""
    def limit(result, limits, metric):
        return (result[field], limit_name) if field in result else None
    return limit


def model_stream_fraction(path):
    """Return decode tokens/s times the model file's bytes over the copy bandwidth.

    One decoded token reads every weight once, so the file size (weights, tied
    embeddings included, plus a little metadata) is the bytes streamed per token.
    The KV cache reads are left out, so at depth this understates the traffic.
    """
    def limit(result, limits, metric):
        if not limits or metric != "decode_tokens_per_s" or not path.exists():
            return None
        return result[metric] * path.stat().st_size / 1e9 / limits["copy_gb_per_s"], "copy (weights)"
    return limit


def attention_cases(quick, threads):
    cases = []
    lengths = [512] if quick else [512, 2048, 8192, 16384]
    shapes = [(8, 64)] if quick else [(8, 64), (16, 128)]
    dtypes = ["f32"] if quick else ["f32", "bf16"]

    def timing(n):
        # Calls of a second or more are timed once with no warm-up on both sides, so a
        # round of the largest cases takes minutes, not a quarter of an hour.
        if quick or n >= 8192:
            return (["--min-runs", "1", "--warmup-runs", "0", "--min-time-ms", "0"],
                    ["--reps", "1", "--warmup", "0" if n >= 8192 else "1"])
        return [], []

    for dtype in dtypes:
        for heads, dim in shapes:
            for n in lengths:
                common = ["--seq-len", str(n), "--heads", str(heads), "--head-dim", str(dim), "--causal",
                          "--dtype", dtype, "--threads", str(threads)]
                attend_timing, peer_timing = timing(n)
                cases.append(Case("attention", f"causal {dtype} h{heads} d{dim} N={n}",
                                  ["bench", "attention", "--kv-heads", str(heads), *common, *attend_timing,
                                   "--baseline", "gemm", "--json"],
                                  "torch SDPA", ["torch_attention.py", *common, *peer_timing], ["ms"], False,
                                  slow=n >= 8192, limit=field_fraction("ratio_to_gemm", "GEMM")))
    for n in [4096] if quick else [4096, 32768]:
        # --window 511: each query attends to itself and the 511 keys before it, 512 in all.
        common = ["--seq-len", str(n), "--heads", "8", "--head-dim", "64", "--causal", "--window", "511",
                  "--dtype", "f32", "--threads", str(threads)]
        attend_timing, peer_timing = timing(n)
        cases.append(Case("attention", f"window 512 f32 h8 d64 N={n}",
                          ["bench", "attention", "--kv-heads", "8", *common, *attend_timing, "--baseline", "gemm",
                           "--json"],
                          "torch SDPA", ["torch_attention.py", *common, *peer_timing], ["ms"], False,
                          slow=n >= 8192, limit=field_fraction("ratio_to_gemm", "GEMM")))
    return cases


def decode_cases(quick, threads):
    cases = []
    runs = "3" if quick else "15"
    for kv_len in [1024] if quick else [1024, 8192, 32768]:
        common = ["--heads", "32", "--kv-heads", "8", "--head-dim", "128", "--threads", str(threads)]
        cases.append(Case("decode", f"GQA 32/8 d128 L={kv_len} f32",
                          ["bench", "decode", "--kv-len", str(kv_len), "--dtype", "f32", "--runs", runs, *common,
                           "--json"],
                          "torch SDPA", ["torch_attention.py", "--seq-len", "1", "--kv-len", str(kv_len), *common,
                                         "--reps", runs],
                          ["ms"], False, limit=field_fraction("kv_over_copy", "copy")))
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
            cases.append(Case("generate", f"{label} pp{prompt}/tg{gen} @ depth {depth}",
                              ["bench", "generate", *common, "--quiet", "--json"],
                              "llama.cpp", ["llama_cpp_generate.py", *common],
                              ["prefill_tokens_per_s", "decode_tokens_per_s"], True,
                              slow=depth > 0, limit=model_stream_fraction(path)))
    return cases


def embed_cases(quick, threads):
    folder = models_dir() / "all-MiniLM-L6-v2"
    cases = []
    for batch in [1] if quick else [1, 32]:
        common = ["--batch", str(batch), "--tokens", "128", "--threads", str(threads)]
        cases.append(Case("embed", f"MiniLM batch {batch} x 128 tokens",
                          ["bench", "embed", "--model", str(folder), *common, "--json"],
                          "sentence-transformers", ["st_embed.py", "--model", str(folder), *common],
                          ["sentences_per_s"], True, limit=field_fraction("gemm_fraction", "GEMM")))
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
    """Alternate attend and peer runs; return each side's parsed results and first error.

    A side that fails once is not run again, and its results are dropped."""
    results = {"attend": [], "peer": []}
    errors = {"attend": None, "peer": None}
    for _ in range(rounds):
        sides = [("attend", [str(attend), *case.attend_args])]
        if peer_python:
            sides.append(("peer", [peer_python, str(PEERS / case.peer_args[0]), *case.peer_args[1:]]))
        for side, cmd in sides:
            if errors[side]:
                continue
            result, error = run_json(cmd, timeout)
            missing = [m for m in case.metrics if result is not None and m not in result]
            if error:
                errors[side] = error
            elif missing:
                errors[side] = f"no field {missing[0]} in {sorted(result)}"
            else:
                results[side].append(result)
    return {side: [] if errors[side] else runs for side, runs in results.items()}, errors


def summarise(case, results, errors, limits):
    """Build one table row per metric: both sides' medians, their ratio and attend's
    median fraction of a machine limit."""
    rows = []
    for metric in case.metrics:
        values = {side: statistics.median(r[metric] for r in runs) if runs else None
                  for side, runs in results.items()}
        fractions = [case.limit(r, limits, metric) for r in results["attend"]] if case.limit else []
        fractions = [f for f in fractions if f is not None]
        fraction = (statistics.median(f[0] for f in fractions), fractions[0][1]) if fractions else None
        rows.append({"group": case.group, "name": case.name, "peer_name": case.peer, "metric": metric,
                     "attend": values["attend"], "peer": values["peer"], "runs": len(results["attend"]),
                     "errors": errors, "ratio": ratio(case, values["attend"], values["peer"]),
                     "fraction": fraction})
    return rows


def ratio(case, attend_value, peer_value):
    if attend_value is None or peer_value is None or attend_value <= 0 or peer_value <= 0:
        return None
    return attend_value / peer_value if case.higher_is_better else peer_value / attend_value


def machine_limits(attend, threads, quick):
    """Run `attend bench machine` once: f32 GEMM GFLOP/s and copy GB/s, or an error."""
    size = ["--gemm-size", "256", "--copy-mib", "64", "--seconds", "0.1"] if quick else []
    return run_json([str(attend), "bench", "machine", "--threads", str(threads), *size, "--json"], 600)


def mean_limits(measured):
    """Return the mean of the limit measurements that succeeded, or None."""
    ok = [m for m in measured if m]
    if not ok:
        return None
    limits = {key: statistics.mean(m[key] for m in ok) for key in ("gemm_gflops", "copy_gb_per_s")}
    limits["gemm_size"] = ok[0].get("gemm_size", 1024)
    limits["copy_mib"] = ok[0].get("copy_bytes", 1 << 30) / (1 << 20)
    return limits


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


UNITS = {"ms": "ms", "prefill_tokens_per_s": "tokens/s", "decode_tokens_per_s": "tokens/s",
         "sentences_per_s": "sentences/s"}
LABELS = {"ms": "", "prefill_tokens_per_s": " prefill", "decode_tokens_per_s": " decode",
          "sentences_per_s": ""}


def label(row):
    return row["name"] + LABELS[row["metric"]]


def render_limits(limits, measured_limits, args):
    """Describe the machine limits and how the `of limit` column relates to them."""
    lines = []
    lines.append("### Machine limits")
    lines.append("")
    if limits:
        each = "; ".join(f"{m['gemm_gflops']:.1f} GFLOP/s, {m['copy_gb_per_s']:.2f} GB/s"
                         for m in measured_limits if m)
        lines.append(f"`attend bench machine --threads {args.threads}`, run before and after each run of the cases "
                     f"({each}); the mean: f32 GEMM (gemm crate, {limits['gemm_size']}^3) "
                     f"**{limits['gemm_gflops']:.1f} GFLOP/s**, memory copy ({limits['copy_mib']:.0f} MiB, bytes "
                     f"copied per second) "
                     f"**{limits['copy_gb_per_s']:.2f} GB/s**.")
        lines.append("")
        lines.append("The `of limit` column is attend's median fraction of a machine limit. For attention, "
                     "decode and MiniLM the kernel's own benchmark measures the limit in the same process, "
                     "alternating with the kernel, with the same code as `attend bench machine`, so both see "
                     "the same load: attention GFLOP/s (visible pairs only) over the 1024^3 f32 GEMM "
                     "(`--baseline gemm`); decode KV bytes read per second over a copy of the same bytes "
                     "(`kv_over_copy`; the L = 1024 cache is 8 MiB, so that copy runs in cache); MiniLM "
                     "forward GFLOP/s over an f32 GEMM at its feed-forward shape (`gemm_fraction`). For "
                     "generation it is decode tokens/s x model file bytes over the copy bandwidth above, "
                     "the weight bytes streamed per token, with the KV cache reads left out. A stream that "
                     "only reads can exceed the copy rate, up to about twice it, because a copy also writes "
                     "each byte.")
    else:
        lines.append(f"Not measured: {args.limits_error}.")
    lines.append("")
    return lines


def render_table(rows):
    """Build the Markdown table, one line per row."""
    lines = []
    lines.append("| group | case | attend | of limit | peer | peer value | ratio |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in rows:
        u = UNITS[r["metric"]]
        a = f"{r['attend']:.4g} {u}" if r["attend"] is not None else "failed"
        f = f"{r['fraction'][0]:.2f} {r['fraction'][1]}" if r["fraction"] else "n/a"
        if r["peer"] is not None:
            p = f"{r['peer']:.4g} {u}"
        elif r["errors"]["peer"]:
            p = "failed"
        else:
            p = "not run"
        q = f"{r['ratio']:.2f}" if r["ratio"] is not None else "n/a"
        lines.append(f"| {r['group']} | {label(r)} | {a} | {f} | {r['peer_name']} | {p} | {q} |")
    lines.append("")
    return lines


def render(rows, limits, measured_limits, args, versions):
    lines = [BEGIN, "", "## Side by side with the peers", ""]
    command = f"bench/compare.sh{' --quick' if args.quick else ''}"
    lines.append(f"Written by `{command}` (bench/compare.py) on {datetime.date.today().isoformat()}. "
                 f"CPU: {cpu_model()}, {args.threads} threads for attend and for each peer. "
                 f"Versions: attend {args.attend_version}; {versions}. Each case runs attend and "
                 f"the peer alternately (A B A B), each run a fresh process, and compares the medians.")
    lines.append("")
    lines.append("To reproduce on a fresh machine: `bench/compare.sh`, which fetches the models, builds attend, "
                 "installs the peers into `bench/.venv-peers` with `bench/peers/setup.sh` and runs every "
                 "group. `PEER_PYTHON=PATH` reuses an environment, `--groups` picks groups and "
                 "`--results bench/compare_results.json` merges them with the groups of earlier runs, "
                 "whose raw medians that file keeps.")
    lines.append("")
    if args.group_notes:
        lines.append("Groups, when each run of them finished and with how many alternating rounds (the slow "
                     "cases are attention at N >= 8192 and generation at depth 4096):")
        lines.append("")
        lines += [f"- {note}" for note in args.group_notes]
    else:
        rounds = f"{args.rounds} rounds per case"
        if args.slow_rounds != args.rounds:
            rounds += (f", {args.slow_rounds} for the slow cases (attention at N >= 8192, generation at "
                       f"depth 4096)")
        lines.append(f"{rounds}.")
    lines.append("")
    lines.append("A ratio above 1 means attend is faster: peer time / attend time for `ms`, "
                 "attend rate / peer rate otherwise.")
    lines.append("")
    slower = [r for r in rows if r["ratio"] is not None and r["ratio"] < 1]
    if slower:
        lines.append("### Cases where attend is slower")
        lines.append("")
        for r in slower:
            lines.append(f"- {r['group']}: {label(r)}: ratio {r['ratio']:.2f}. {cause(r)}")
        lines.append("")
    failed = [r for r in rows if r["errors"]["attend"] or r["errors"]["peer"]]
    if failed:
        lines.append("### Failed runs")
        lines.append("")
        for r in failed:
            for side in ("attend", "peer"):
                if r["errors"][side]:
                    who = "attend" if side == "attend" else r["peer_name"]
                    lines.append(f"- {r['group']}: {label(r)}: {who} failed: {r['errors'][side]}")
        lines.append("")
    lines += render_limits(limits, measured_limits, args)
    lines += render_table(rows)
    if args.plot_path:
        lines.append(f"Attention time against sequence length: [{args.plot_path}]({args.plot_path})")
        lines.append("")
        lines.append(f"![attention time against sequence length]({args.plot_path})")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def cause(row):
    """Return the likely cause of a slower case, from what the runs showed."""
    for matches, explain in CAUSES:
        if matches(row):
            return explain(row)
    return "No cause identified yet."


def peer_fraction(row):
    """Return the peer's fraction of the same limit, from attend's fraction and the ratio."""
    return row["fraction"][0] / row["ratio"] if row["fraction"] and row["ratio"] else float("nan")


def own_fraction(row):
    return row["fraction"][0] if row["fraction"] else float("nan")


# (does it match the row, its sentence): first match wins. Each sentence states what the
# runs behind this table showed, so revisit them when the numbers move.
CAUSES = [
    (lambda r: r["name"].startswith("causal f32"),
     lambda r: (f"PyTorch's CPU flash attention multiplies its query and key blocks with MKL's sgemm and "
                f"reached {peer_fraction(r):.2f} of the gemm crate's f32 GEMM rate here, against "
                f"{own_fraction(r):.2f} for attend's tiled kernel, whose hand-written AVX-512 block products "
                f"and per-block softmax rescaling are not yet at GEMM speed.")),
    (lambda r: r["name"].startswith("causal bf16"),
     lambda r: (f"PyTorch's bf16 path runs its block products as oneDNN brgemm micro-kernels with bf16 "
                f"inputs (on a CPU oneDNN reports as AMX-BF16 capable) and reached {peer_fraction(r):.2f} "
                f"of the f32 GEMM rate, while attend's AVX512-BF16 kernel reached {own_fraction(r):.2f}, "
                f"about its f32 speed.")),
    (lambda r: r["group"] == "attention",
     lambda r: f"The tiled kernel reached only {own_fraction(r):.2f} of the f32 GEMM rate here."),
    (lambda r: r["group"] == "decode",
     lambda r: (f"The decode kernel read the cache at {own_fraction(r):.2f} of the rate of a copy of the "
                f"same bytes, so the peer streamed it closer to the memory limit.")),
    (lambda r: r["group"] == "generate" and r["metric"] == "prefill_tokens_per_s",
     lambda r: ("llama.cpp's prefill multiplies the quantized weights by whole batches of tokens with its "
                "repacked AVX-512 kernels, so the batch products, not attention, likely set the rate.")),
    (lambda r: r["group"] == "generate",
     lambda r: (f"attend streamed the weights at {own_fraction(r):.2f} of the copy bandwidth per decoded "
                f"token, so llama.cpp's per-token overhead or its kernels were lower on this case.")),
    (lambda r: r["group"] == "embed",
     lambda r: (f"PyTorch runs the encoder's GEMMs through MKL, while attend's forward pass reached "
                f"{own_fraction(r):.2f} of the gemm crate's rate at the feed-forward shape.")),
]


def attend_version(attend):
    proc = subprocess.run([str(attend), "--version"], capture_output=True, text=True)
    version = proc.stdout.strip().split()[-1] if proc.returncode == 0 and proc.stdout.strip() else "unknown"
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return f"{version} ({git.stdout.strip()})" if git.returncode == 0 else version


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
        if r["group"] != "attention" or "h8 d64" not in r["name"] or "bf16" in r["name"]:
            continue
        kind = "window 512" if r["name"].startswith("window") else "causal"
        n = int(r["name"].rsplit("N=", 1)[1])
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


GROUPS = ["attention", "decode", "generate", "embed"]


def merge_results(path, groups, rows, limits_run, args):
    """Store this run's rows in the JSON file `path` and return every stored row (in
    group order), every stored machine-limit measurement and a note per group.

    Without --cases a group's rows replace those an earlier run stored for it. With
    --cases only the rows of the cases run now are replaced, and the group's note
    names them as a rerun."""
    stored = json.loads(path.read_text()) if path.exists() else {"groups": {}, "limits": []}
    now = datetime.datetime.now().isoformat(timespec="minutes")
    for group in groups:
        new = [r for r in rows if r["group"] == group]
        meta = {"when": now, "rounds": args.rounds, "slow_rounds": args.slow_rounds, "peers": args.peers,
                "load": args.load}
        old = stored["groups"].get(group)
        if args.cases and old:
            names = {r["name"] for r in new}
            kept = []
            for r in old["rows"]:
                if r["name"] not in names:
                    kept.append(r)
                elif all(k["name"] != r["name"] for k in kept):
                    kept += [n for n in new if n["name"] == r["name"]]
            kept += [n for n in new if all(k["name"] != n["name"] for k in kept)]
            old["rows"] = kept
            old.setdefault("reruns", []).append(dict(meta, cases=sorted(names)))
        else:
            stored["groups"][group] = dict(meta, rows=new)
    stored["limits"] += [dict(m, when=now) for m in limits_run if m]
    stored["attend_version"] = args.attend_version
    path.write_text(json.dumps(stored, indent=1) + "\n")
    merged = [r for g in GROUPS if g in stored["groups"] for r in stored["groups"][g]["rows"]]
    return merged, stored["limits"], group_notes(stored)


def plural(count, noun):
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def run_note(run):
    note = f"finished {run['when']}, {plural(run['rounds'], 'round')} ({run['slow_rounds']} for slow cases)"
    if run.get("load"):
        note += f", load average {run['load'][0]:.1f} before and {run['load'][1]:.1f} after"
    return note


def group_notes(stored):
    """Describe when and how each stored group ran, with the 1-minute load average
    before and after (2 threads on a machine that other work shares)."""
    notes = []
    for g in GROUPS:
        if g not in stored["groups"]:
            continue
        group = stored["groups"][g]
        note = f"{g}: {run_note(group)}"
        for rerun in group.get("reruns", []):
            note += f"; rerun of {', '.join(rerun['cases'])}: {run_note(rerun)}"
        notes.append(note)
    return notes


def write_table(rows, limits, measured, args, versions):
    out = Path(args.out)
    args.plot_path = None
    if not args.quick and any(r["group"] == "attention" for r in rows):
        png = ROOT / "bench" / "attention_scaling.png"
        if plot(rows, args.peer_python, png):
            args.plot_path = os.path.relpath(png, out.resolve().parent)
    write_benchmarks(render(rows, limits, measured, args, versions), out)
    failed = [r for r in rows if r["attend"] is None]
    print(f"wrote {out}: {len(rows)} rows, {len(failed)} failed on the attend side", file=sys.stderr)
    return 1 if failed else 0


def render_only(args):
    if not args.results or not Path(args.results).exists():
        sys.exit("error: --render-only needs --results FILE written by an earlier run")
    stored = json.loads(Path(args.results).read_text())
    rows = [r for g in GROUPS if g in stored["groups"] for r in stored["groups"][g]["rows"]]
    measured = stored["limits"]
    args.group_notes = group_notes(stored)
    args.peers = any(stored["groups"][g]["peers"] for g in stored["groups"])
    args.quick = False
    args.rounds = args.slow_rounds = None
    args.limits_error = "no measurement stored"
    args.attend_version = stored.get("attend_version") or attend_version(args.attend)
    return write_table(rows, mean_limits(measured), measured, args, peer_versions(args.peer_python))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--attend", required=True, help="path of the attend binary")
    p.add_argument("--peer-python", help="python of the peers' environment; omit to run attend only")
    p.add_argument("--quick", action="store_true",
                   help="one small case per group, one round, short timings (a smoke run)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, help="alternating rounds per case (default 3, 1 with --quick)")
    p.add_argument("--slow-rounds", type=int,
                   help="rounds for the slow cases: attention at N >= 8192, generation at depth (default: --rounds)")
    p.add_argument("--timeout", type=int, default=900, help="seconds allowed for one run")
    p.add_argument("--groups", default=",".join(GROUPS))
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="Markdown file to update")
    p.add_argument("--results", help="JSON file that keeps each group's rows, so that a run of some groups "
                                     "writes a table that also holds the groups of earlier runs")
    p.add_argument("--cases", help="run only the cases whose name contains this text; with --results, "
                                   "their rows replace the stored ones and the other rows are kept")
    p.add_argument("--render-only", action="store_true",
                   help="run nothing: rewrite the table and the plot from the rows kept in --results")
    args = p.parse_args()
    if args.render_only:
        return render_only(args)
    args.attend_version = attend_version(args.attend)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.slow_rounds = args.slow_rounds or args.rounds
    args.peers = bool(args.peer_python)

    builders = {"attention": attention_cases, "decode": decode_cases, "generate": generate_cases,
                "embed": embed_cases}
    groups = args.groups.split(",")
    cases = []
    for group in groups:
        if group not in builders:
            sys.exit(f"error: unknown group '{group}'; choose from {', '.join(builders)}")
        cases += builders[group](args.quick, args.threads)
    if args.cases:
        cases = [case for case in cases if args.cases in case.name]
        if not cases:
            sys.exit(f"error: no case of the groups {args.groups} has '{args.cases}' in its name")

    load_before = os.getloadavg()[0]
    measured = []
    limit, error = machine_limits(args.attend, args.threads, args.quick)
    measured.append(limit)
    args.limits_error = error
    if error:
        print(f"warning: machine limits not measured: {error}", file=sys.stderr)

    runs = []
    for i, case in enumerate(cases, 1):
        rounds = args.slow_rounds if case.slow else args.rounds
        print(f"[{i}/{len(cases)}] {case.group}: {case.name} ({plural(rounds, 'round')})", file=sys.stderr, flush=True)
        results, errors = measure(case, args.attend, args.peer_python, rounds, args.timeout)
        runs.append((case, results, errors))
        if errors["attend"]:
            print(f"  attend failed: {errors['attend']}", file=sys.stderr)
        if args.peers and errors["peer"]:
            print(f"  {case.peer} failed: {errors['peer']}", file=sys.stderr)

    limit, error = machine_limits(args.attend, args.threads, args.quick)
    measured.append(limit)
    if error:
        print(f"warning: machine limits not measured after the cases: {error}", file=sys.stderr)
    args.load = (load_before, os.getloadavg()[0])
    limits = mean_limits(measured)
    rows = [row for case, results, errors in runs for row in summarise(case, results, errors, limits)]

    args.group_notes = []
    if args.results:
        rows, measured, args.group_notes = merge_results(Path(args.results), groups, rows, measured, args)
        limits = mean_limits(measured)

    return write_table(rows, limits, measured, args, peer_versions(args.peer_python))


if __name__ == "__main__":
    sys.exit(main())
