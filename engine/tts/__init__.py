"""The TTS track's foundations: the espeak-ng reference voice (``espeak``), the student's log-mel
features and the Griffin-Lim vocoder (``audio``), and the one pinned MCD (``mcd``). docs/TTS.md
has the definitions, the choices and the figures. Nothing here imports textual."""
