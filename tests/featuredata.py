"""Feature test data made on this machine from real signal processing, never downloaded.

- `keywords(path)`: spoken keywords synthesized with espeak-ng (a Debian package the install step
  brings) across voices, speeds and pitches, with noise added, turned into 49x10 MFCCs: 16 kHz, 1 s,
  40 ms frames every 20 ms, 40 mel bands 20-4000 Hz, log, DCT-II, 10 coefficients (the front end of
  the common keyword-spotting benchmark). A group is one utterance (its noisy copies stay together).
- `machine_sounds(path)`: a machine's hum (harmonics of a jittering fundamental); the anomalies are
  shifted harmonics, clicks or bearing noise. Log-mel windows of 5 frames x 128 bands = 640 floats,
  as the machine-sound baseline takes them; a group is one clip.

numpy and scipy only. Both are deterministic, and each file is made once: an existing path is
reused as it is, whatever the arguments, so give each set of parameters its own path (the tests and
the bench do)."""

import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

RATE = 16_000
WORDS = ("yes", "no", "up", "down", "left", "right")
VOICES = ("en", "en-us", "en+f3", "en+m3", "en-gb-x-rp")


def _mel_filters(n_fft, bands, low, high, rate=RATE):
    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    edges = 700.0 * (10 ** (np.linspace(mel(low), mel(high), bands + 2) / 2595.0) - 1.0)
    bins = np.fft.rfftfreq(n_fft, 1.0 / rate)
    filters = np.zeros((bands, len(bins)))
    for b in range(bands):
        lo, mid, hi = edges[b:b + 3]
        filters[b] = np.clip(np.minimum((bins - lo) / (mid - lo), (hi - bins) / (hi - mid)), 0.0, None)
    return filters


def _frames(signal, frame, hop):
    n = 1 + (len(signal) - frame) // hop
    return np.stack([signal[i * hop:i * hop + frame] for i in range(n)])


def mfcc(signal, coefficients=10, frame=640, hop=320, bands=40, n_fft=1024):
    """(49, 10) MFCCs of one second at 16 kHz."""
    from scipy.fft import dct

    frames = _frames(signal, frame, hop) * np.hanning(frame)
    power = np.abs(np.fft.rfft(frames, n_fft)) ** 2
    energies = power @ _mel_filters(n_fft, bands, 20.0, 4000.0).T
    return dct(np.log(energies + 1e-6), type=2, norm="ortho", axis=-1)[:, :coefficients].astype(np.float32)


def log_mel(signal, bands=128, frame=1024, hop=512):
    """(frames, 128) log-mel energies in dB."""
    frames = _frames(signal, frame, hop) * np.hanning(frame)
    power = np.abs(np.fft.rfft(frames, frame)) ** 2
    return (10.0 * np.log10(power @ _mel_filters(frame, bands, 0.0, RATE / 2).T + 1e-10)).astype(np.float32)


def _speak(word, voice, speed, pitch, work):
    from scipy.signal import resample_poly

    wav = Path(work) / "w.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), word],
                   check=True, capture_output=True)
    with wave.open(str(wav)) as w:
        rate, audio = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), np.int16)
    audio = resample_poly(audio.astype(np.float64) / 32768.0, RATE, rate)
    speech = np.flatnonzero(np.abs(audio) > 0.02)
    audio = audio[speech[0]:speech[-1] + 1] if len(speech) else audio
    return audio[:RATE]


def keywords(path, words=WORDS, voices=VOICES, speeds=(120, 160, 200), pitches=(30, 60), noisy=2, noise=(-3.5, -2.0),
             seed=0):
    """An .npz of keyword MFCCs: x (N, 49, 10) float32, y, class_names, group. `noise`: the range of the
    added white noise's standard deviation, in log10 (speech peaks near 0.5). Made once per path."""
    path = Path(path)
    if path.exists():
        return path
    rng = np.random.RandomState(seed)
    xs, ys, groups = [], [], []
    with tempfile.TemporaryDirectory() as work:
        for label, word in enumerate(words):
            for voice in voices:
                for speed in speeds:
                    for pitch in pitches:
                        audio = _speak(word, voice, speed, pitch, work)
                        group = f"{word}/{voice}/{speed}/{pitch}"
                        for copy in range(noisy):
                            clip = np.zeros(RATE)
                            start = rng.randint(0, RATE - len(audio) + 1)
                            clip[start:start + len(audio)] = audio * rng.uniform(0.5, 1.0)
                            clip += rng.normal(0.0, 10 ** rng.uniform(*noise), RATE)
                            xs.append(mfcc(clip))
                            ys.append(label)
                            groups.append(group)
    tmp = path.with_name(path.name + ".part.npz")
    np.savez(tmp, x=np.stack(xs), y=np.asarray(ys), class_names=np.asarray(words), group=np.asarray(groups))
    tmp.replace(path)
    return path


def _hum(rng, seconds, kind, strength=1.0):
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 120.0 * (1.0 + 0.004 * np.cumsum(rng.normal(0.0, 1.0, len(t))) / np.sqrt(len(t)))  # jitter
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    shift = 1.0 + 0.07 * strength if kind == "shifted" else 1.0
    signal = sum(a * np.sin(k * shift * phase + rng.uniform(0, 2 * np.pi))
                 for k, a in ((1, 1.0), (2, 0.5), (3, 0.3), (5, 0.15), (8, 0.08)))
    signal += rng.normal(0.0, 0.05, len(t))
    if kind == "clicks":
        for at in rng.randint(0, len(t) - 64, 12):
            signal[at:at + 64] += strength * rng.uniform(1.0, 2.0) * np.exp(-np.arange(64) / 8.0) * rng.choice((-1, 1))
    if kind == "bearing":
        band = np.convolve(rng.normal(0.0, 1.0, len(t)), np.hanning(9), "same")
        carrier = np.sin(2 * np.pi * 3500.0 * t)
        signal += 0.25 * strength * band * carrier * (1.0 + np.sin(2 * np.pi * 37.0 * t))
    return signal / 4.0


def machine_sounds(path, normal_clips=60, anomalous_clips=30, seconds=1.5, every=4, strength=0.3, seed=0):
    """An .npz of log-mel windows: x (N, 640) float32, y (0 normal, 1 anomaly), group (the clip).
    `strength` scales the anomalies (the harmonic shift, the clicks' and the bearing noise's level)."""
    path = Path(path)
    if path.exists():
        return path
    rng = np.random.RandomState(seed)
    kinds = ["normal"] * normal_clips + [("shifted", "clicks", "bearing")[i % 3] for i in range(anomalous_clips)]
    xs, ys, groups = [], [], []
    for clip, kind in enumerate(kinds):
        mel = log_mel(_hum(rng, seconds, kind, strength))
        for start in range(0, len(mel) - 4, every):
            xs.append(mel[start:start + 5].reshape(-1))
            ys.append(int(kind != "normal"))
            groups.append(f"clip{clip:03d}-{kind}")
    tmp = path.with_name(path.name + ".part.npz")
    np.savez(tmp, x=np.stack(xs), y=np.asarray(ys), group=np.asarray(groups))
    tmp.replace(path)
    return path
