"""The benchmark scripts under scripts/ run, time every variant they name and write their JSON record
(one repeat of one iteration on small models: what they measure is in docs/benchmarks.md, not here)."""
import json
import subprocess
import sys

import pytest

from support import ROOT

QUICK = ["--batch", "1", "--warmup", "0", "--iters", "1", "--repeats", "1"]


def run_script(script: str, tmp_path, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *QUICK, "--out", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (record,) = tmp_path.glob("*.json")
    return json.loads(record.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("script, args, variants, tokens", [
    ("bench_patch.py", ["--model", "deit_tiny_patch16_224"], {"base", "ours", "static", "attn"},
     {"ours": [197, 158, 158, 158, 127, 127, 127, 102, 102, 102, 102, 102]}),
    ("bench_resnet.py", ["--model", "resnet18", "--clock", "cpu"], {"base", "L-W", "T-W", "static"},
     {"L-W": [3136, 2304, 400, 100]}),
    ("bench_vidtldr.py", ["--width", "64", "--frames", "2", "--models", "base,vid_tldr,vid_tldr_ours_flash"],
     {"base", "vid_tldr", "vid_tldr_ours_flash"}, {"vid_tldr": [392, 196, 98, 49, 49, 49, 49, 49, 49, 49, 49, 49]}),
])
def test_benchmark_script_times_every_variant_and_writes_its_record(tmp_path, script, args, variants, tokens):
    record = run_script(script, tmp_path, *args)
    assert set(record["results"]) == variants
    for name, result in record["results"].items():
        assert result["throughput"] > 0 and result["gmacs"] > 0
        if name in tokens:
            assert result["tokens"] == tokens[name]
    assert record["ratios"] and all(value > 0 for value in record["ratios"].values())


def test_an_unknown_variant_is_a_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_resnet.py"), "--models", "base,nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown --models entries ['nope']" in proc.stderr
