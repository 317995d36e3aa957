"""Speech: sentences read by `espeak-ng` (a formant synthesiser, Debian package espeak-ng), as log-mel frames.

espeak-ng is deterministic for a given version, voice, speed and pitch; the corpus varies these per
document (8 voices x speed x pitch) so that the same sentence is not always the same sound, as with
real speakers. Frames: 25 ms Hann windows every 20 ms (50 frames/s, HuBERT's unit rate), 40 mel bands
(60 Hz-8 kHz, HTK mel scale), natural log of the band power; leading and trailing silence (frames 40 dB
under the utterance's loudest) is trimmed. numpy only: an STFT and a filterbank are a few lines.
The program is found on PATH and run with an argument list (no shell); the text goes in on stdin, so a
sentence can never be taken for an option.
"""
from __future__ import annotations

import functools
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import List, NamedTuple, Sequence

import numpy as np

from .errors import RealCorpusError

ESPEAK = "espeak-ng"
VOICES = ("en-us+m1", "en-us+m3", "en-us+f1", "en-us+f3", "en+m2", "en+m4", "en+f2", "en+f4")
SPEED = (140, 181)  # words per minute, [lo, hi)
PITCH = (35, 66)    # espeak pitch 0-99, [lo, hi)
N_MELS, WIN_S, HOP_S, FMIN, FMAX, TRIM_DB = 40, 0.025, 0.020, 60.0, 8000.0, 40.0
_INSTALL = ("install it with `sudo apt-get install espeak-ng` (Debian/Ubuntu; launch/setup_env.sh does this "
            "when run as root) or your system's package manager")


class Utterance(NamedTuple):
    text: str
    voice: str
    speed: int
    pitch: int


def random_utterance(rng: np.random.Generator, text: str) -> Utterance:
    return Utterance(text, VOICES[int(rng.integers(0, len(VOICES)))], int(rng.integers(*SPEED)),
                     int(rng.integers(*PITCH)))


def require_espeak(program: str = ESPEAK) -> str:
    """Path of the espeak-ng program, or a RealCorpusError that says how to install it."""
    path = shutil.which(program)
    if path is None:
        raise RealCorpusError(f"the real-data corpus synthesises its speech with espeak-ng, but `{program}` is not "
                              f"on PATH: {_INSTALL}")
    return path


def espeak_version(program: str = ESPEAK) -> str:
    out = subprocess.run([require_espeak(program), "--version"], capture_output=True, text=True, check=False)
    return " ".join(out.stdout.split()[:4])  # "eSpeak NG text-to-speech: 1.51" (drop the data path)


def parse_wav(data: bytes, what: str):
    """int16 samples of espeak's streamed WAV (its header sizes are placeholders, so read to the end)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE" or data[12:16] != b"fmt ":
        raise RealCorpusError(f"espeak-ng wrote no WAV audio for {what} ({len(data)} bytes)")
    fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", data[20:36])
    if fmt != 1 or channels != 1 or bits != 16:
        raise RealCorpusError(f"espeak-ng wrote format {fmt}, {channels} channels, {bits} bits for {what}; "
                              "expected 16-bit mono PCM")
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if cid == b"data":
            body = data[pos + 8:]
            return np.frombuffer(body[:len(body) // 2 * 2], dtype="<i2"), rate
        pos += 8 + size
    raise RealCorpusError(f"espeak-ng's WAV for {what} has no data chunk")


def synthesise(utt: Utterance, program: str = ESPEAK):
    """(int16 samples, sample rate) of one utterance."""
    cmd = [program, "--stdin", "--stdout", "-v", utt.voice, "-s", str(utt.speed), "-p", str(utt.pitch)]
    out = subprocess.run(cmd, input=utt.text.encode("ascii"), capture_output=True, check=False)
    if out.returncode != 0:
        raise RealCorpusError(f"espeak-ng failed (exit {out.returncode}) on voice {utt.voice!r}, text "
                              f"{utt.text!r}: {out.stderr.decode(errors='replace').strip()}")
    return parse_wav(out.stdout, f"{utt.text!r}")


@functools.lru_cache(maxsize=8)
def mel_filterbank(rate: int, n_fft: int, n_mels: int = N_MELS, fmin: float = FMIN, fmax: float = FMAX):
    """Triangular HTK-mel filters, [n_fft // 2 + 1, n_mels] and C-contiguous (a transposed view would
    send the product down numpy's slow non-BLAS path, 25x slower)."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(fmin), mel(min(fmax, rate / 2)), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * rate / n_fft
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bank = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return np.ascontiguousarray(bank.T)


def log_mel(samples: np.ndarray, rate: int) -> np.ndarray:
    """Log-mel frames [n_frames, N_MELS] (float64), edge silence trimmed; at least one frame."""
    win, hop = int(round(WIN_S * rate)), int(round(HOP_S * rate))
    n_fft = 1 << (win - 1).bit_length()
    x = samples.astype(np.float64) / 32768.0
    if len(x) < win:
        x = np.pad(x, (0, win - len(x)))
    n = 1 + (len(x) - win) // hop
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop][:n] * np.hanning(win + 2)[1:-1]
    spec = np.fft.rfft(frames, n=n_fft, axis=1)
    power = spec.real ** 2 + spec.imag ** 2
    energy_db = 10.0 * np.log10(power.sum(1) + 1e-12)
    loud = np.flatnonzero(energy_db >= energy_db.max() - TRIM_DB)
    power = power[loud[0]:loud[-1] + 1]
    return np.log(power @ mel_filterbank(rate, n_fft) + 1e-10)


def features(utterances: Sequence[Utterance], workers: int = 2, program: str = ESPEAK) -> List[np.ndarray]:
    """Log-mel frames of every utterance, in order (synthesis runs in `workers` threads: the work is in
    the espeak-ng processes and numpy, both outside the GIL; results do not depend on `workers`)."""
    def one(utt):
        samples, rate = synthesise(utt, program)
        return log_mel(samples, rate)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, utterances))
