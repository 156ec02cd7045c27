"""The TTS track: the espeak-ng reference voice (``espeak``), the student's log-mel features and
the Griffin-Lim vocoder (``audio``), the one pinned MCD (``mcd``), and the student itself — a
small non-autoregressive TTS model styled by Global Style Tokens (``model``), its files, loading
and rendering (``student``) and the offline build of ``assets/tts/`` (``build``). docs/TTS.md
has the definitions, the choices and the figures. Nothing here imports textual."""
