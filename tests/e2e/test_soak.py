"""scripts/soak.py, briefly: steady mixed load through a real stack leaves no keys behind and no growing process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"
MAX_RSS_GROWTH_MIB = 100


def test_a_short_soak_leaves_nothing_behind(models_file, redis_url, tmp_path):
    command = [
        sys.executable, str(SOAK),
        "--seconds", "10",
        "--warmup-seconds", "3",
        "--models-file", str(models_file),
        "--redis-url", redis_url,
        "--max-rss-growth-mib", str(MAX_RSS_GROWTH_MIB),
    ]  # fmt: skip
    log = tmp_path / "soak.log"
    with open(log, "wb") as stderr:
        finished = subprocess.run(command, stdout=subprocess.PIPE, stderr=stderr, timeout=240, check=False)
    report = json.loads(finished.stdout)
    print("\n" + json.dumps(report, indent=1))
    assert finished.returncode == 0, log.read_text(errors="replace")[-5000:]
    assert report["requests"].get("completed", 0) > 0
    assert not [outcome for outcome in report["requests"] if outcome.startswith("failed")]
    redis = report["redis"]
    assert redis["queue_entries"] == redis["reply_streams"] == redis["without_ttl"] == 0
    for name, rss in report["rss_mib"].items():
        assert rss["after"] - rss["before"] < MAX_RSS_GROWTH_MIB, name
