"""Speech synthesis with espeak-ng (Debian package ``espeak-ng``), offline.

:func:`synthesize` runs ``espeak-ng --stdout`` and returns int16 mono PCM at the rate
asked for (espeak-ng speaks at 22,050 Hz; libswresample converts).
"""

from __future__ import annotations

import io
import subprocess
import wave

import numpy as np

from icegate.errors import DependencyError
from transceiver.agent_protocol import AudioFormat
from transceiver.audio import PcmConverter

ESPEAK = "espeak-ng"
VOICE = "en-us"
WORDS_PER_MINUTE = 140


def synthesize(text: str, rate: int, *, voice: str = VOICE, wpm: int = WORDS_PER_MINUTE) -> np.ndarray:
    """``text`` spoken by espeak-ng as int16 mono at ``rate`` Hz."""
    try:
        done = subprocess.run(
            [ESPEAK, "--stdout", "-v", voice, "-s", str(wpm), "--", text],
            capture_output=True,
            check=True,
            timeout=30,
        )
    except FileNotFoundError as exc:
        raise DependencyError(f"{ESPEAK} is not installed (Debian: apt-get install espeak-ng)") from exc
    except subprocess.CalledProcessError as exc:
        raise DependencyError(f"{ESPEAK} failed: {exc.stderr.decode(errors='replace').strip()}") from exc
    with wave.open(io.BytesIO(done.stdout)) as wav:
        source = wav.getframerate()
        pcm = wav.readframes(wav.getnframes())
    if source == rate:
        return np.frombuffer(pcm, "<i2").copy()
    converter = PcmConverter(AudioFormat(source, 10), AudioFormat(rate, 10))
    tail = bytes(source // 10 * 2)  # flushes the resampler's filter delay
    return np.frombuffer(b"".join(converter.push(pcm + tail)), "<i2").copy()
