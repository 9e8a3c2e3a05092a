"""Bad input through the real `split` / `mask` stage commands (subprocesses, as DVC runs them).

Each case either fails -- exit status 2, one line `error: path[:line]: what is wrong` on stderr, and no output
folder left behind -- or is skipped and counted in stats.json. README.md ("Bad input") lists which is which.
"""

from __future__ import annotations

import gzip
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages import run
from tests.conftest import ROOT

GOOD = "\n\n".join(f"a good line number {i}\nand its neighbour {i}" for i in range(40)) + "\n"
TASK = {"type": "triplet", "triplet": {"dir": str(ROOT / "data" / "demo" / "tasks" / "song-sections")}}


def write_params(cwd: Path, split: dict | None, mask: dict | None, base_model: str, raw: str | None) -> None:
    params = {"seed": 1, "split": {"inputs": ["in"], "val_fraction": 0.3, **(split or {})}, "task": TASK}
    if mask is not None:
        params["mask"] = mask
    if base_model:
        params["base_model"] = base_model
    (cwd / "params.yaml").write_text(raw if raw is not None else yaml.safe_dump(params))


def command(cwd: Path, name: str, split: dict | None = None, mask: dict | None = None, base_model: str = "",
            raw_params: str | None = None) -> subprocess.CompletedProcess:
    """The stage as DVC runs it: `python -m stages.<name>` in its own process."""
    write_params(cwd, split, mask, base_model, raw_params)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def stage(monkeypatch, capsys):
    """The same entry point (`stages.run(main)`: error handling, exit status, stderr) called in this process:
    a fresh interpreter per case would spend most of the test importing torch."""

    def call(cwd: Path, name: str, split: dict | None = None, mask: dict | None = None, base_model: str = "",
             raw_params: str | None = None) -> subprocess.CompletedProcess:
        write_params(cwd, split, mask, base_model, raw_params)
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", [f"dapt {name}"])
        capsys.readouterr()
        code = 0
        try:
            run(importlib.import_module(f"stages.{name}").main)
        except SystemExit as err:
            code = err.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess([name], code, out.out, out.err)

    return call


def put(cwd: Path, name: str, data: str | bytes) -> Path:
    path = cwd / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def assert_fails(proc: subprocess.CompletedProcess, cwd: Path, pattern: str, out: str = "lines") -> None:
    """Exit 2, exactly one line on stderr matching `error: <pattern>`, and nothing left in artifacts/."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert re.match(f"error: {pattern}", lines[0]), lines[0]
    assert not (cwd / "artifacts" / out).exists()
    leftovers = list((cwd / "artifacts").glob(".*")) if (cwd / "artifacts").exists() else []
    assert leftovers == [], leftovers


def stats_of(proc: subprocess.CompletedProcess, cwd: Path) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((cwd / "artifacts" / "lines" / "stats.json").read_text())


@pytest.fixture
def cwd(tmp_path) -> Path:
    put(tmp_path, "good.txt", GOOD)
    return tmp_path


# --- skipped and counted ---------------------------------------------------------------------------------------


def test_empty_file_and_blank_only_file_are_skipped_and_counted(cwd, stage):
    put(cwd, "empty.txt", "")
    put(cwd, "blank.txt", "\n  \n\t\r\n\n")
    put(cwd, "empty.csv", "")
    s = stats_of(stage(cwd, "split"), cwd)
    assert s["files"] == 4 and s["empty_files"] == 3
    assert s["blank_lines"] == 39 + 4


def test_invalid_utf8_replace_is_counted(cwd, stage):
    put(cwd, "latin1.txt", "caf\xe9 au lait\nna\xefve\n".encode("latin-1"))
    proc = stage(cwd, "split")
    s = stats_of(proc, cwd)
    assert s["invalid_utf8_lines"] == 2
    assert "caf\ufffd au lait" in (cwd / "artifacts" / "lines" / "train-00000.arrow").read_bytes().decode(
        "utf-8", "replace") + (cwd / "artifacts" / "lines" / "val-00000.arrow").read_bytes().decode("utf-8", "replace")


def test_nul_bytes_bom_and_crlf_are_cleaned(cwd, stage):
    put(cwd, "win.txt", b"\xef\xbb\xbffirst windows line\r\nsec\x00ond\x00 line\r\n\r\nthird line\r\n")
    s = stats_of(stage(cwd, "split"), cwd)
    assert s["dropped"] == {}
    import pyarrow as pa

    from pipeline.shards import read_shards

    rows = pa.concat_tables([read_shards(cwd / "artifacts" / "lines", s) for s in ("train", "val")]).to_pylist()
    win = {r["text"]: (r["line_no"], r["doc"]) for r in rows if r["source"] == "in/win.txt"}
    assert win == {"first windows line": (1, 0), "second line": (2, 0), "third line": (4, 1)}


def test_one_megabyte_line_is_dropped_as_too_long(cwd, stage):
    put(cwd, "long.txt", "x" * (1 << 20) + "\nshort one\n")
    s = stats_of(stage(cwd, "split"), cwd)
    assert s["dropped"] == {"too_long": 1}


def test_jsonl_bad_records_skip_counts_them(cwd, stage):
    put(cwd, "r.jsonl", '{"text": "fine record"}\n{"text": oops}\n{"body": "x"}\n{"text": 3}\n')
    s = stats_of(stage(cwd, "split", split={"bad_records": "skip"}), cwd)
    assert s["dropped"] == {"bad_records": 3}


# --- failures: one line, nothing left behind --------------------------------------------------------------------


def test_invalid_utf8_strict_fails_with_file_line_and_byte(cwd, stage):
    put(cwd, "latin1.txt", "ok line\ncaf\xe9\n".encode("latin-1"))
    assert_fails(stage(cwd, "split", split={"encoding_errors": "strict"}), cwd,
                 r"in/latin1\.txt:2: invalid UTF-8 at byte 11 ")


def test_truncated_gzip_fails(cwd, stage):
    data = gzip.compress(GOOD.encode() * 20)
    put(cwd, "cut.txt.gz", data[: len(data) // 2])
    assert_fails(stage(cwd, "split"), cwd, r"in/cut\.txt\.gz: truncated or corrupt gzip")


@pytest.mark.parametrize("body, pattern", [
    ('{"text": "ok"}\n{"text": oops}\n', r"in/r\.jsonl:2: not valid JSON"),
    ('{"text": "ok"}\n\n{"body": "x"}\n', r"in/r\.jsonl:3: no field 'text'"),
    ('{"text": ["a", "list"]}\n', r"in/r\.jsonl:1: field 'text' is list, not a string"),
])
def test_jsonl_bad_records_fail(cwd, body, pattern, stage):
    put(cwd, "r.jsonl", body)
    assert_fails(stage(cwd, "split"), cwd, pattern)


def test_csv_missing_column_fails(cwd, stage):
    put(cwd, "t.csv", "id,body\n1,hello\n")
    assert_fails(stage(cwd, "split"), cwd, r"in/t\.csv:1: no column 'text' \(columns: \['id', 'body'\]\)")


def test_unreadable_path_fails(cwd, stage):
    (cwd / "in" / "loop.txt").symlink_to(cwd / "in" / "loop.txt")
    assert_fails(stage(cwd, "split", split={"inputs": ["in/good.txt", "in/loop.txt"]}), cwd,
                 r"in/loop\.txt: cannot read: ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_permission_denied_fails(cwd, stage):
    path = put(cwd, "secret.txt", "hidden\n")
    path.chmod(0)
    assert_fails(stage(cwd, "split"), cwd, r"in/secret\.txt: cannot read: Permission denied")


@pytest.mark.parametrize("inputs, pattern", [
    (["in/*.parquet"], r"in/\*\.parquet: matches no "),
    (["in/nothere.txt"], r"in/nothere\.txt: no such file or folder"),
    (["in/good.txt", "in/notes.md"], r"in/notes\.md: unsupported file type"),
])
def test_inputs_that_match_nothing_fail(cwd, inputs, pattern, stage):
    put(cwd, "notes.md", "x")
    assert_fails(stage(cwd, "split", split={"inputs": inputs}), cwd, pattern)


def test_corpus_empty_after_filtering_fails(cwd, stage):
    assert_fails(stage(cwd, "split", split={"min_chars": 500}), cwd,
                 r"in: no train lines left after filtering: 80 lines in, dropped \{'too_short': 80\}")


@pytest.mark.parametrize("split, pattern", [
    ({"val_fraction": 2}, r"params\.yaml: split\.val_fraction = 2: Input should be less than 1"),
    ({"encoding_errors": "ignore"}, r"params\.yaml: split\.encoding_errors = 'ignore': Input should be "),
    ({"leak_ngram": 2}, r"params\.yaml: split\.leak_ngram = 2: use 0 \(off\) or at least 3"),
    ({"min_chars": 10, "max_chars": 5}, r"params\.yaml: split.*: max_chars = 5 is below min_chars = 10"),
    ({"inptus": ["in"]}, r"params\.yaml: unknown key 'split\.inptus'"),
])
def test_bad_split_params_fail(cwd, split, pattern, stage):
    assert_fails(stage(cwd, "split", split=split), cwd, pattern)


def test_bad_mask_params_and_missing_lines_fail(cwd, tiny_model, stage):
    assert_fails(stage(cwd, "mask", mask={"mode": "sometimes"}, base_model=str(tiny_model)), cwd,
                 r"params\.yaml: mask\.mode = 'sometimes': Input should be 'static' or 'dynamic'", out="masked")
    assert_fails(stage(cwd, "mask", mask={"max_seq_len": 4}, base_model=str(tiny_model)), cwd,
                 r"params\.yaml: mask\.max_seq_len = 4: Input should be greater than or equal to 8", out="masked")
    assert_fails(stage(cwd, "mask", base_model=str(tiny_model)), cwd,
                 r"artifacts/lines: no train-\*\.arrow shards \(did the previous stage run\?\)", out="masked")


def test_params_file_that_is_not_yaml_fails(cwd, stage):
    assert_fails(stage(cwd, "split", raw_params="split: [unclosed\n"), cwd, r"params\.yaml: not valid YAML")


# --- the real command lines -----------------------------------------------------------------------------------


def test_real_command_fails_the_same_way(cwd):
    put(cwd, "latin1.txt", "ok line\ncaf\xe9\n".encode("latin-1"))
    assert_fails(command(cwd, "split", split={"encoding_errors": "strict"}), cwd,
                 r"in/latin1\.txt:2: invalid UTF-8 at byte 11 ")


def test_real_commands_split_then_mask_succeed_on_the_good_file(cwd, tiny_model):
    """The control case: the same harness passes when nothing is wrong."""
    assert command(cwd, "split").returncode == 0
    proc = command(cwd, "mask", mask={"max_seq_len": 16, "dupe_factor": 1, "num_proc": 1},
                   base_model=str(tiny_model))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.strip() == ""  # no progress bars when stderr is not a terminal
    assert proc.stdout.startswith("mask: 5")  # 56 train lines of the 80 (by document, seeded)
    assert json.loads((cwd / "artifacts" / "masked" / "stats.json").read_text())["mode"] == "static"
    assert_fails(command(cwd, "mask", mask={"mode": "sometimes"}, base_model=str(tiny_model)), cwd,
                 r"params\.yaml: mask\.mode = 'sometimes': Input should be 'static' or 'dynamic'", out="nothing")
