"""``icegate demo --agent speech`` end to end: spoken turns through the relay, words matched both ways.

Clients speak espeak-ng phrases, the speech agent (pocketsphinx + rules + espeak-ng)
recognises and answers them, the clients recognise the answers; the demo passes a
session only when every turn's words match on both sides (labkit.demo_report.judge).
"""

from __future__ import annotations

import json

from labkit.demo import SPEECH_SCRIPT
from tests.e2e.test_demo import assert_nothing_left, run_demo


def test_speech_demo_holds_spoken_turns_whose_words_match_the_script(lab_name: str) -> None:
    code, summary, progress = run_demo(lab_name, "--mode", "userspace", "--agent", "speech")
    assert code == 0, f"exit {code}\n{progress[-4000:]}\n{json.dumps(summary, indent=1)[-4000:]}"
    assert_nothing_left(lab_name)
    assert summary["ok"] is True and summary["agent"] == "speech"
    for s in summary["sessions"]:
        assert s["turns"], s
        for turn in s["turns"]:
            assert turn["said"] in SPEECH_SCRIPT
            assert turn["agent_heard"] == turn["said"]
            assert turn["client_heard"] == turn["agent_said"] != "sorry please say that again"
            assert turn["rtt_ms"] is not None
