"""The reference voice: espeak-ng through ctypes, synthesising into memory with phoneme timings.

``espeakng-loader`` ships ``libespeak-ng`` and its data, so no system package is needed. A style
(:class:`Style`) is a voice, a variant, a pitch, a pitch range and a rate; :func:`synthesize` gives
the waveform (float32 in [-1, 1] at 22 050 Hz) and one :class:`Phoneme` per phoneme event, whose
sample boundaries tile the audio from the first phoneme to the end — what durations are supervised
from. :func:`phonemize` gives the same symbols (espeak-ng's ASCII phoneme mnemonics, stress marks
included, e.g. ``'eI``), taken from the same events, so symbols and timings can never disagree.

espeak-ng keeps synthesis state in static variables that re-initialising does not reset (the
pitch-flutter phase, the echo buffer, the wave phase), and draws on libc's ``rand()``: two calls with the same
text and style in one process give different audio. Each synthesis therefore runs on a freshly
loaded copy of the library (load, initialise, synthesise, terminate, unload: about 5 ms) with both
random generators seeded, which makes the audio a pure function of (text, style): bit-identical
across calls and processes. One process-wide lock serialises it, because the library is global.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import NamedTuple

import numpy as np

from engine.errors import GenesisError

SAMPLE_RATE = 22050
"""What espeak-ng produces, and the rate every TTS module here works at."""

RATE_MIN, RATE_MAX = 80, 450  # espeakRATE_MINIMUM / espeakRATE_MAXIMUM, words per minute
RAND_SEED = 0

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EE_OK, _EE_NOT_FOUND = 0, 2
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./()\- ]*\Z")
_INSTALL_HINT = "install it with `pip install espeakng-loader` (it ships libespeak-ng and its data)"


class EspeakError(GenesisError):
    """espeak-ng cannot be loaded, or refused a request."""


class EspeakUnavailableError(EspeakError):
    """The espeak-ng library or its data cannot be found or loaded."""


class UnknownVoiceError(EspeakError, ValueError):
    """A style names a voice or variant that this espeak-ng does not have."""


# --- styles -----------------------------------------------------------------------------------


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"Style.{name} must be an integer, not {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"Style.{name} = {value} is out of range: it must be within {lo}–{hi}")


@dataclass(frozen=True)
class Style:
    """How the reference voice speaks: espeak-ng's voice, variant, pitch, pitch range and rate.

    ``voice`` is a language or voice name (``en-us``, ``en-gb``, ``fr``); ``variant`` a voice
    variant (``f3``, ``m2``, ``klatt``) or "" for the voice's own; ``pitch`` the base pitch and
    ``pitch_range`` the intonation range, both 0–100 (50 is espeak's default); ``rate`` the
    speaking rate in words per minute, 80–450 (175 is espeak's default).
    """

    voice: str = "en-us"
    variant: str = ""
    pitch: int = 50
    rate: int = 175
    pitch_range: int = 50

    def __post_init__(self) -> None:
        if not isinstance(self.voice, str) or not _NAME.match(self.voice) or "+" in self.voice:
            raise ValueError(
                f"Style.voice must be an espeak-ng voice name such as 'en-us' (the variant goes in "
                f"Style.variant), not {self.voice!r}"
            )
        if not isinstance(self.variant, str) or (
            self.variant and (not _NAME.match(self.variant) or "/" in self.variant)
        ):
            raise ValueError(
                f"Style.variant must be an espeak-ng variant name such as 'f3', or '' for none, "
                f"not {self.variant!r}"
            )
        _check_int("pitch", self.pitch, 0, 100)
        _check_int("pitch_range", self.pitch_range, 0, 100)
        _check_int("rate", self.rate, RATE_MIN, RATE_MAX)

    @property
    def espeak_name(self) -> str:
        """The name espeak_SetVoiceByName takes: ``voice`` or ``voice+variant``."""
        return f"{self.voice}+{self.variant}" if self.variant else self.voice

    @property
    def label(self) -> str:
        """A short readable form for logs and file names: ``en-us+f3 p50 g50 r175``."""
        return f"{self.espeak_name} p{self.pitch} g{self.pitch_range} r{self.rate}"


# --- results ----------------------------------------------------------------------------------


class Phoneme(NamedTuple):
    """One phoneme and the samples it covers: ``samples[start:end]``."""

    symbol: str
    start: int
    end: int


@dataclass(frozen=True, eq=False)
class Synthesis:
    """One utterance: the waveform and its phonemes, in order, tiling [phonemes[0].start, len)."""

    text: str
    style: Style
    samples: np.ndarray  # float32, shape (n,), in [-1, 1]; read-only
    phonemes: tuple[Phoneme, ...]
    sample_rate: int = field(default=SAMPLE_RATE)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def symbols(self) -> list[str]:
        return [p.symbol for p in self.phonemes]

    def frame_durations(self, hop_length: int) -> np.ndarray:
        """Frames per phoneme for features of ``1 + len(samples) // hop_length`` centred frames.

        Frame t is centred on sample ``t * hop_length`` and goes to the phoneme it falls in; the
        few frames before the first phoneme go to it. The counts (int64) sum to the frame count.
        """
        if hop_length <= 0:
            raise ValueError(f"hop_length must be positive, not {hop_length}")
        if not self.phonemes:
            return np.zeros(0, dtype=np.int64)
        n_frames = 1 + len(self.samples) // hop_length
        starts = np.array([p.start for p in self.phonemes[1:]], dtype=np.int64)
        # first frame whose centre is at or after each interior boundary
        cuts = -(-starts // hop_length)
        edges = np.concatenate([[0], np.minimum(cuts, n_frames), [n_frames]])
        return np.diff(edges)


class VoiceInfo(NamedTuple):
    """An installed espeak-ng voice: its ``name``, its file ``identifier`` and its ``languages``."""

    name: str
    identifier: str
    languages: tuple[str, ...]


# --- ctypes structures ------------------------------------------------------------------------


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # priority byte + name, repeated, ending with a zero byte
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


def _languages(ptr: int | None) -> tuple[str, ...]:
    out: list[str] = []
    if not ptr:
        return ()
    pos = ptr
    while ctypes.string_at(pos, 1) != b"\0":  # the priority byte; a zero one ends the list
        name = ctypes.string_at(pos + 1)
        out.append(name.decode("utf-8", "replace"))
        pos += len(name) + 2
    return tuple(out)


def _unload(handle: int) -> None:
    import _ctypes

    close = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)
    if close is not None:
        close(handle)


# --- the engine -------------------------------------------------------------------------------


class _Engine:
    """The process-wide espeak-ng: paths found once, then one fresh library load per request."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._paths: tuple[str, str] | None = None
        self._voices: tuple[VoiceInfo, ...] | None = None
        self._variants: frozenset[str] | None = None
        self._warned_shared = False
        self._libc: ctypes.CDLL | None = None
        # one request at a time (under the lock): what the callback collects
        self._chunks: list[bytes] = []
        self._events: list[tuple[str, int]] = []
        self._callback_error: BaseException | None = None
        self._callback = _SynthCallback(self._on_synth)  # kept alive as long as the engine

    # paths and loading

    def paths(self) -> tuple[str, str]:
        if self._paths is None:
            try:
                import espeakng_loader
            except ImportError as e:
                raise EspeakUnavailableError(
                    f"The TTS reference voice needs espeak-ng, and the espeakng-loader package is "
                    f"not installed ({e}): {_INSTALL_HINT}."
                ) from None
            try:
                lib, data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
            except Exception as e:  # the package raises RuntimeError when its data is missing
                raise EspeakUnavailableError(
                    f"espeakng-loader is installed but incomplete ({e}): reinstall it, "
                    f"`pip install --force-reinstall espeakng-loader`."
                ) from None
            if not Path(lib).is_file():
                raise EspeakUnavailableError(
                    f"espeakng-loader does not ship libespeak-ng for this platform ({lib} is "
                    f"missing): {_INSTALL_HINT}, on Linux, macOS or Windows."
                )
            self._paths = (lib, data)
        return self._paths

    def _load(self) -> ctypes.CDLL:
        lib_path, data_path = self.paths()
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as e:
            raise EspeakUnavailableError(
                f"libespeak-ng could not be loaded from {lib_path} ({e}): {_INSTALL_HINT}."
            ) from None
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_Voice)]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_PHONEME_EVENTS
        )
        if rate != SAMPLE_RATE:
            self._close(lib)
            why = "its data could not be read" if rate < 0 else f"it runs at {rate} Hz"
            raise EspeakUnavailableError(
                f"espeak-ng did not initialise from {data_path} ({why}; {SAMPLE_RATE} Hz "
                f"expected): reinstall it, `pip install --force-reinstall espeakng-loader`."
            )
        lib.espeak_SetSynthCallback(self._callback)
        return lib

    def _close(self, lib: ctypes.CDLL) -> None:
        lib.espeak_Terminate()
        _unload(lib._handle)
        if not self._warned_shared and os.name == "posix" and hasattr(os, "RTLD_NOLOAD"):
            try:
                still = ctypes.CDLL(lib._name, mode=os.RTLD_NOLOAD)
            except OSError:
                return  # unloaded: the next request starts from a clean library
            _unload(still._handle)  # RTLD_NOLOAD took a reference of its own
            self._warned_shared = True
            warnings.warn(
                "libespeak-ng stays loaded by something else in this process, so its state "
                "carries from one synthesis to the next: audio may not be bit-reproducible.",
                RuntimeWarning,
                stacklevel=4,
            )

    # what the library can do

    def voices(self) -> tuple[VoiceInfo, ...]:
        with self.lock:
            if self._voices is None:
                lib = self._load()
                try:
                    table = lib.espeak_ListVoices(None)
                    found = []
                    i = 0
                    while table[i]:
                        v = table[i].contents
                        found.append(
                            VoiceInfo(
                                (v.name or b"").decode("utf-8", "replace"),
                                (v.identifier or b"").decode("utf-8", "replace"),
                                _languages(v.languages),
                            )
                        )
                        i += 1
                finally:
                    self._close(lib)
                self._voices = tuple(found)
            return self._voices

    def variants(self) -> frozenset[str]:
        if self._variants is None:
            folder = Path(self.paths()[1]) / "voices" / "!v"
            self._variants = frozenset(p.name for p in folder.iterdir() if p.is_file())
        return self._variants

    # synthesis

    def _on_synth(self, wav, n: int, events) -> int:
        try:
            if n > 0 and wav:
                self._chunks.append(ctypes.string_at(wav, 2 * n))
            i = 0
            while events[i].type != _EVENT_LIST_TERMINATED:
                e = events[i]
                if e.type == _EVENT_PHONEME:
                    self._events.append((e.id.string.decode("utf-8", "replace"), e.sample))
                i += 1
            return 0
        except BaseException as e:  # an exception must not cross into C: keep it, stop espeak
            self._callback_error = e
            return 1

    @staticmethod
    def _set_voice(lib: ctypes.CDLL, style: Style) -> bool:
        """By voice name or file (``en-us``, ``gmw/en``), else by language (``en-gb``) through
        espeak-ng's own preference order, as its command line does; then the variant, if any."""
        suffix = f"+{style.variant}" if style.variant else ""
        if lib.espeak_SetVoiceByName(style.espeak_name.encode()) == _EE_OK:
            return True
        spec = _Voice()
        spec.languages = ctypes.cast(ctypes.c_char_p(style.voice.encode()), ctypes.c_void_p)
        table = lib.espeak_ListVoices(ctypes.byref(spec))
        if not table or not table[0]:
            return False
        voice = table[0].contents
        if style.voice.lower() not in (lang.lower() for lang in _languages(voice.languages)):
            return False  # espeak-ng offers a fallback voice for any language; not ours
        name = (voice.identifier or b"").decode() + suffix
        return lib.espeak_SetVoiceByName(name.encode()) == _EE_OK

    def synthesize(self, text: str, style: Style) -> tuple[np.ndarray, list[tuple[str, int]]]:
        if style.variant and style.variant not in self.variants():
            raise UnknownVoiceError(
                f"espeak-ng has no voice variant {style.variant!r} (in style {style.label}). "
                f"Available variants: {', '.join(sorted(self.variants(), key=str.lower))}."
            )
        data = text.encode("utf-8")
        with self.lock:
            lib = self._load()
            try:
                if not self._set_voice(lib, style):
                    raise UnknownVoiceError(
                        f"espeak-ng has no voice {style.voice!r} (in style {style.label}). "
                        f"List the installed ones with engine.tts.espeak.available_voices(), or "
                        f"`python -m engine.tts.espeak --voices`."
                    )
                for param, value in (
                    (_PARAM_RATE, style.rate),
                    (_PARAM_PITCH, style.pitch),
                    (_PARAM_RANGE, style.pitch_range),
                    (_PARAM_VOLUME, 100),
                ):
                    lib.espeak_SetParameter(param, int(value), 0)
                if self._libc is None and os.name == "posix":
                    self._libc = ctypes.CDLL(None)
                if self._libc is not None:
                    self._libc.srand(RAND_SEED)  # espeak-ng draws on libc's rand() too
                if hasattr(lib, "espeak_ng_SetRandSeed"):
                    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
                    lib.espeak_ng_SetRandSeed(RAND_SEED)
                self._chunks, self._events, self._callback_error = [], [], None
                status = lib.espeak_Synth(
                    data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
                )
                if self._callback_error is not None:
                    raise self._callback_error
                if status != _EE_OK:
                    raise EspeakError(f"espeak-ng could not synthesise {text!r} (status {status}).")
                pcm = np.frombuffer(b"".join(self._chunks), dtype=np.int16)
                return pcm, self._events
            finally:
                self._chunks, self._events = [], []
                self._close(lib)


_ENGINE = _Engine()


# --- the API ----------------------------------------------------------------------------------


def _check_text(text: str) -> None:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, not {type(text).__name__}")
    if "\0" in text:
        raise ValueError("text must not contain NUL characters")


def synthesize(text: str, style: Style | None = None) -> Synthesis:
    """Speak ``text`` in ``style`` (espeak's en-us defaults when None): waveform and phonemes.

    Deterministic: the same (text, style) gives bit-identical audio. Text that is empty or only
    whitespace gives an empty Synthesis (no samples, no phonemes). Raises UnknownVoiceError for a
    voice or variant espeak-ng does not have, EspeakUnavailableError when it cannot be loaded.
    """
    _check_text(text)
    style = style or Style()
    if not text.strip():
        empty = np.zeros(0, dtype=np.float32)
        empty.setflags(write=False)
        return Synthesis(text, style, empty, ())
    pcm, events = _ENGINE.synthesize(text, style)
    samples = (pcm.astype(np.float32) / 32768.0).astype(np.float32)
    samples.setflags(write=False)
    n = len(samples)
    starts = [min(max(s, 0), n) for _, s in events]
    # keep boundaries monotone even if espeak ever reported one out of order
    starts = list(np.maximum.accumulate(starts)) if starts else []
    ends = starts[1:] + [n]
    phonemes = tuple(
        Phoneme(sym, int(a), int(b)) for (sym, _), a, b in zip(events, starts, ends, strict=True)
    )
    return Synthesis(text, style, samples, phonemes)


def phonemize(text: str, style: Style | None = None) -> list[str]:
    """The phoneme symbols :func:`synthesize` times for ``text`` — the same events, so they match."""
    return synthesize(text, style).symbols


def available_voices() -> tuple[VoiceInfo, ...]:
    """The voices this espeak-ng has (``Style.voice`` also takes their language codes)."""
    return _ENGINE.voices()


def available_variants() -> tuple[str, ...]:
    """The voice variants ``Style.variant`` can name (``f3``, ``m2``, ``klatt`` …), sorted."""
    return tuple(sorted(_ENGINE.variants(), key=str.lower))


def check_style(style: Style) -> None:
    """Raise UnknownVoiceError unless espeak-ng has the style's voice and variant."""
    synthesize("a", style)


def _main(argv: Sequence[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m engine.tts.espeak", description="The espeak-ng reference voice."
    )
    parser.add_argument("--voices", action="store_true", help="list voices and their languages")
    parser.add_argument("--variants", action="store_true", help="list voice variants")
    parser.add_argument("--say", metavar="TEXT", help="synthesise TEXT and print its phonemes")
    parser.add_argument("--style", default="en-us", help="voice[+variant], e.g. en-us+f3")
    parser.add_argument("--wav", metavar="PATH", help="with --say: write the audio here")
    args = parser.parse_args(argv)
    try:
        if args.voices:
            for v in available_voices():
                print(f"{', '.join(v.languages) or '-':24} {v.name:28} {v.identifier}")
        if args.variants:
            print(" ".join(available_variants()))
        if args.say is not None:
            voice, _, variant = args.style.partition("+")
            syn = synthesize(args.say, Style(voice=voice, variant=variant))
            print(f"{syn.duration_s:.2f} s, {len(syn.phonemes)} phonemes:")
            print(" ".join(f"{p.symbol}[{p.start}:{p.end}]" for p in syn.phonemes))
            if args.wav:
                import soundfile

                soundfile.write(args.wav, syn.samples, syn.sample_rate)
    except (EspeakError, ValueError) as e:
        print(f"espeak: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
