"""The TTS student: phonemes → durations → log-mel frames, styled by Global Style Tokens.

A small non-autoregressive model in the FastSpeech family, all 1-D convolutions (cheap on a CPU,
and prunable by Torch-Pruning's dependency graph: only Embedding, Conv1d, Linear and LayerNorm):

* **encoder** — phoneme embedding, then ``ConvBlock``s (Conv1d k → ReLU → LayerNorm → Conv1d 1,
  residual, LayerNorm) over the phoneme sequence;
* **style** — K learnable style tokens (the columns of ``style_tokens``, a bias-free
  ``Linear(K, token_dim)``, so ``style_tokens(w)`` is Σ_k w_k·token_k); the style vector is the
  weighted sum of the tokens for weights ``w`` (B, K) and is added, through a projection each, to
  the encoder output and to the decoder input. In training the weights come from the **reference
  encoder** (convs over a reference mel of *another* sentence in the same style, mean and standard
  deviation pooled with the reference's speaking rate in phonemes per frame, a linear layer to K
  logits, softmax): Global Style Tokens with one attention
  head whose keys are the rows of that last layer. At inference the weights are given directly —
  that is the genome the style evolution searches: ``synthesize_mel(ids, weights)`` renders one
  sentence in B styles in one forward pass. The **neutral** style is the uniform weights 1/K;
* **duration predictor** — two convs on the styled encoder output to log(1 + frames) per phoneme
  (supervised by espeak-ng's phoneme timings), plus a tempo offset read off the style vector; the **length regulator** repeats each phoneme's
  vector by its duration (the true durations in training, the rounded prediction at inference) and
  appends where each frame sits inside its phoneme;
* **decoder** — more ``ConvBlock``s over the frames, then a linear layer to the 80 log-mel bands
  (engine/tts/audio.MEL), normalised per band by the training set's mean and deviation (buffers).

Padding: every sequence op is masked, so a row's valid frames do not depend on what else is in the
batch (a row of a batch equals the same row alone, to float rounding). Pruning: the residual width
(``hidden``) is shared by the embedding, the style projections and the output layer, which a
pruner keeps whole (:func:`prunable_ignored_layers`); what it removes is the inner channels of the
blocks and of the duration predictor, whose widths the config lists per block, so a pruned model
saves and loads like any other.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

PAD, UNK = "<pad>", "<unk>"
"""Symbol 0 pads phoneme sequences, symbol 1 stands for a symbol the vocabulary lacks."""


@dataclass(frozen=True)
class StudentConfig:
    """The architecture. Per-block inner widths are lists so that a pruned model has a config."""

    n_symbols: int
    hidden: int = 128
    encoder_filters: tuple[int, ...] = (256, 256, 256)
    decoder_filters: tuple[int, ...] = (256, 256, 256, 256)
    kernel: int = 5
    duration_filters: tuple[int, int] = (128, 128)
    n_tokens: int = 10
    token_dim: int = 64
    reference_filters: tuple[int, ...] = (128, 128, 128)
    n_mels: int = 80

    def __post_init__(self) -> None:
        for name in ("encoder_filters", "decoder_filters", "duration_filters", "reference_filters"):
            object.__setattr__(self, name, tuple(int(x) for x in getattr(self, name)))
        if self.n_symbols < 3:
            raise ValueError(
                f"n_symbols must be at least 3 (pad, unk, one symbol), not {self.n_symbols}"
            )
        if self.kernel % 2 != 1:
            raise ValueError(f"kernel must be odd (same-length convolutions), not {self.kernel}")
        if len(self.duration_filters) != 2:
            raise ValueError("duration_filters must list two widths")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudentConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown architecture fields {sorted(unknown)}")
        return cls(**d)


def _mask_of(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """(B, 1, t) float mask: 1 on the first ``lengths[b]`` positions of row b."""
    return (torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]).unsqueeze(1).float()


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, T) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvBlock(nn.Module):
    """x + Conv1d(1)(LayerNorm(ReLU(Conv1d(k)(x)))), then LayerNorm; masked before each conv."""

    def __init__(self, hidden: int, filters: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(hidden, filters, kernel, padding=kernel // 2)
        self.norm1 = ChannelNorm(filters)
        self.conv2 = nn.Conv1d(filters, hidden, 1)
        self.norm2 = ChannelNorm(hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.norm1(F.relu(self.conv1(x * mask)))
        y = self.conv2(y * mask)
        return self.norm2(x + y) * mask


class DurationPredictor(nn.Module):
    """log(1 + frames) per phoneme from the styled encoder output (B, H, T) → (B, T)."""

    def __init__(self, hidden: int, filters: tuple[int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(hidden, filters[0], 3, padding=1)
        self.norm1 = ChannelNorm(filters[0])
        self.conv2 = nn.Conv1d(filters[0], filters[1], 3, padding=1)
        self.norm2 = ChannelNorm(filters[1])
        self.out = nn.Conv1d(filters[1], 1, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.norm1(F.relu(self.conv1(x * mask)))
        y = self.norm2(F.relu(self.conv2(y * mask)))
        return (self.out(y) * mask).squeeze(1)


class ReferenceEncoder(nn.Module):
    """A reference log-mel (B, n_mels, T) → K style-token logits (B, K)."""

    def __init__(self, n_mels: int, filters: tuple[int, ...], n_tokens: int) -> None:
        super().__init__()
        convs, norms = [], []
        c_in = n_mels
        for i, c in enumerate(filters):
            convs.append(nn.Conv1d(c_in, c, 3, padding=2**i, dilation=2**i))
            norms.append(ChannelNorm(c))
            c_in = c
        self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
        # pooled: mean and deviation of the last conv over time, and the speaking rate
        self.query = nn.Linear(2 * c_in + 1, c_in)
        self.keys = nn.Linear(c_in, n_tokens)  # row k: the key of token k

    def forward(
        self, mel: torch.Tensor, lengths: torch.Tensor, n_phonemes: torch.Tensor
    ) -> torch.Tensor:
        """Logits (B, K) from normalised log-mels (B, n_mels, T), their valid frames (B,) and the
        number of phonemes each reference speaks (B,): phonemes per frame is the speaking rate,
        which the spectrum alone does not show (espeak-ng's rates 140 and 220 differ by 1.55× in
        phonemes per frame but only by a fraction of a sentence-to-sentence spread in any
        spectral-change statistic tried)."""
        mask = _mask_of(lengths, mel.shape[-1])
        rate = (torch.log(n_phonemes.float().clamp(min=1) / lengths.float().clamp(min=1)) + 1.9) * 4
        x = mel
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = norm(F.relu(conv(x * mask)))
        x = x * mask
        n = mask.sum(-1).clamp(min=1)
        mean = x.sum(-1) / n
        std = ((((x - mean[..., None]) * mask) ** 2).sum(-1) / n + 1e-5).sqrt()
        q = torch.tanh(self.query(torch.cat([mean, std, rate[:, None]], dim=1)))
        return self.keys(q)


@dataclass
class StudentOutput:
    """What a forward pass gives: log-mels (B, n_mels, frames) padded with the floor, valid
    frames per row, log(1 + frames) predicted per phoneme and the frames used per phoneme."""

    mel: torch.Tensor
    mel_lengths: torch.Tensor
    log_durations: torch.Tensor
    durations: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


class TTSStudent(nn.Module):
    """The student (see the module docstring). ``forward(ids, weights)`` is the inference path."""

    def __init__(self, config: StudentConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.embedding = nn.Embedding(c.n_symbols, c.hidden, padding_idx=0)
        self.encoder = nn.ModuleList(ConvBlock(c.hidden, f, c.kernel) for f in c.encoder_filters)
        self.style_tokens = nn.Linear(c.n_tokens, c.token_dim, bias=False)
        self.style_to_encoder = nn.Linear(c.token_dim, c.hidden)
        self.style_to_decoder = nn.Linear(c.token_dim, c.hidden)
        self.duration = DurationPredictor(c.hidden, c.duration_filters)
        # the style's global tempo: an offset to every phoneme's log(1 + frames). Without this
        # direct path the tokens never learned the rate (the duration loss's pull through the
        # predictor's convs was too weak: rates 140 and 220 both came out at about 175)
        self.style_to_tempo = nn.Linear(c.token_dim, 1)
        self.position = nn.Linear(2, c.hidden)  # where a frame sits in its phoneme
        self.decoder = nn.ModuleList(ConvBlock(c.hidden, f, c.kernel) for f in c.decoder_filters)
        self.mel_out = nn.Linear(c.hidden, c.n_mels)
        self.reference = ReferenceEncoder(c.n_mels, c.reference_filters, c.n_tokens)
        self.register_buffer("mel_mean", torch.zeros(c.n_mels))
        self.register_buffer("mel_std", torch.ones(c.n_mels))
        self.register_buffer("log_floor", torch.tensor(math.log(1e-5)))
        nn.init.normal_(self.style_tokens.weight, std=0.5)

    # --- configuration read back from the layers (a pruned model's widths) ------------------

    def current_config(self) -> StudentConfig:
        """The config of the model as it is now (after pruning the widths may have changed)."""
        c = self.config
        return StudentConfig(
            n_symbols=self.embedding.num_embeddings,
            hidden=self.embedding.embedding_dim,
            encoder_filters=tuple(b.conv1.out_channels for b in self.encoder),
            decoder_filters=tuple(b.conv1.out_channels for b in self.decoder),
            kernel=c.kernel,
            duration_filters=(self.duration.conv1.out_channels, self.duration.conv2.out_channels),
            n_tokens=self.style_tokens.in_features,
            token_dim=self.style_tokens.out_features,
            reference_filters=tuple(conv.out_channels for conv in self.reference.convs),
            n_mels=self.mel_out.out_features,
        )

    @property
    def n_tokens(self) -> int:
        return self.style_tokens.in_features

    @property
    def tokens(self) -> torch.Tensor:
        """The style-token table (K, token_dim)."""
        return self.style_tokens.weight.t()

    # --- style --------------------------------------------------------------------------------

    def neutral_weights(self, batch: int = 1) -> torch.Tensor:
        """The neutral style: uniform weights 1/K, (batch, K)."""
        p = self.mel_mean
        return torch.full(
            (batch, self.n_tokens), 1.0 / self.n_tokens, dtype=p.dtype, device=p.device
        )

    def style_from_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """Style vectors (B, token_dim) = Σ_k weights[:, k] · token_k, for weights (B, K).

        Any real weights are accepted; the reference encoder produces softmax weights (≥ 0,
        summing to 1), the region the decoder was trained on."""
        if weights.ndim != 2 or weights.shape[1] != self.n_tokens:
            raise ValueError(
                f"style weights must have shape (batch, {self.n_tokens}), got {tuple(weights.shape)}"
            )
        return self.style_tokens(weights.to(self.mel_mean.dtype))

    def reference_weights(
        self,
        mel: torch.Tensor,
        n_phonemes: int | torch.Tensor,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token weights (B, K) the reference encoder reads off log-mels (B, n_mels, T) or
        (n_mels, T) of references that speak ``n_phonemes`` phonemes each (espeak-ng's phonemes
        of the reference text: ``len(vocab.encode_text(text))``)."""
        if mel.ndim == 2:
            mel = mel[None]
        dev = self.mel_mean.device
        mel = mel.to(device=dev, dtype=self.mel_mean.dtype)
        if lengths is None:
            lengths = torch.full((mel.shape[0],), mel.shape[-1], device=dev)
        n = torch.as_tensor(n_phonemes, device=dev).reshape(-1).expand(mel.shape[0])
        norm = (mel - self.mel_mean[:, None]) / self.mel_std[:, None]
        return torch.softmax(self.reference(norm, lengths, n), dim=-1)

    # --- the network --------------------------------------------------------------------------

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Phoneme ids (B, T) → encoder output (B, H, T) and its mask (B, 1, T)."""
        mask = _mask_of(lengths, ids.shape[1])
        x = self.embedding(ids).transpose(1, 2) * mask
        for block in self.encoder:
            x = block(x, mask)
        return x, mask

    @staticmethod
    def regulate(
        x: torch.Tensor, durations: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The length regulator: repeat phoneme vectors x (B, H, T) by integer durations (B, T).

        Returns frames (B, H, F) (zeros past a row's end), frames per row (B,), and per frame its
        position in its phoneme (B, 2, F): (j + 0.5) / d and log(1 + d) / 4 for frame j of d."""
        b, _, t = x.shape
        d = durations.clamp(min=0).long()
        lengths = d.sum(1)
        n = max(int(lengths.max()) if b else 0, 1)
        ends = d.cumsum(1)  # (B, T)
        frame = torch.arange(n, device=x.device)
        # the phoneme of each frame: how many phonemes end at or before it
        idx = (ends[:, None, :] <= frame[None, :, None]).sum(-1).clamp(max=t - 1)  # (B, F)
        valid = (frame[None, :] < lengths[:, None]).float()  # (B, F)
        out = torch.gather(x, 2, idx[:, None, :].expand(-1, x.shape[1], -1)) * valid[:, None]
        dur = torch.gather(d, 1, idx).float()
        start = torch.gather(ends - d, 1, idx).float()
        pos = (
            torch.stack(
                [(frame[None, :] - start + 0.5) / dur.clamp(min=1), torch.log1p(dur) / 4], dim=1
            )
            * valid[:, None]
        )
        return out, lengths, pos

    def decode(
        self, frames: torch.Tensor, pos: torch.Tensor, lengths: torch.Tensor, style: torch.Tensor
    ) -> torch.Tensor:
        """Frames (B, H, F) → normalised log-mel (B, n_mels, F), masked to ``lengths``."""
        mask = _mask_of(lengths, frames.shape[-1])
        x = (
            frames
            + (
                self.position(pos.transpose(1, 2)).transpose(1, 2)
                + self.style_to_decoder(style)[..., None]
            )
            * mask
        )
        for block in self.decoder:
            x = block(x, mask)
        return self.mel_out(x.transpose(1, 2)).transpose(1, 2) * mask

    def run(
        self,
        ids: torch.Tensor,
        id_lengths: torch.Tensor,
        weights: torch.Tensor,
        durations: torch.Tensor | None = None,
    ) -> StudentOutput:
        """The whole pass. ``durations`` (B, T) given: the length regulator uses them (training);
        None: the rounded prediction. The mel is denormalised, padded with the log floor."""
        enc, mask = self.encode(ids, id_lengths)
        style = self.style_from_weights(weights)
        x = (enc + self.style_to_encoder(style)[..., None]) * mask
        log_d = (self.duration(x, mask) + self.style_to_tempo(style)) * mask[:, 0]
        if durations is None:
            durations = (torch.expm1(log_d.detach()).round().clamp(min=0) * mask[:, 0]).long()
            # an utterance has at least one frame
            empty = durations.sum(1) == 0
            if bool(empty.any()):
                durations[empty, 0] = 1
        frames, lengths, pos = self.regulate(x, durations)
        norm = self.decode(frames, pos, lengths, style)
        fmask = _mask_of(lengths, norm.shape[-1])
        mel = (norm * self.mel_std[:, None] + self.mel_mean[:, None]) * fmask + self.log_floor * (
            1 - fmask
        )
        return StudentOutput(mel, lengths, log_d, durations, {"normalised": norm})

    def forward(
        self, ids: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mels (B, n_mels, frames) and log(1 + frames) per phoneme (B, T) for phoneme ids
        (B, T) — all of one length, no padding — in styles ``weights`` (B, K), with predicted
        durations. The path a pruner traces: both outputs, so the duration predictor is in it."""
        lengths = torch.full((ids.shape[0],), ids.shape[1], device=ids.device)
        out = self.run(ids, lengths, weights)
        return out.mel, out.log_durations

    @torch.no_grad()
    def synthesize_mel(
        self, ids: torch.Tensor | list[int], weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One sentence in B styles in one pass: phoneme ids (T,) or (1, T), weights (B, K) →
        log-mels (B, n_mels, frames) padded with the log floor, and valid frames per row (B,).

        Each row has its own durations, so rows differ in length; row i equals the same call
        with weights[i] alone (to float rounding)."""
        p = self.mel_mean
        ids = torch.as_tensor(ids, dtype=torch.long, device=p.device)
        if ids.ndim == 2:
            if ids.shape[0] != 1:
                raise ValueError(f"synthesize_mel takes one sentence, got {ids.shape[0]} rows")
            ids = ids[0]
        if ids.ndim != 1 or len(ids) == 0:
            raise ValueError(
                f"expected a non-empty 1-D sequence of phoneme ids, got {tuple(ids.shape)}"
            )
        weights = torch.as_tensor(weights, dtype=p.dtype, device=p.device)
        if weights.ndim == 1:
            weights = weights[None]
        b = weights.shape[0]
        ids = ids[None].expand(b, -1)
        out = self.run(ids, torch.full((b,), ids.shape[1], device=p.device), weights)
        return out.mel, out.mel_lengths


def count_parameters(model: nn.Module, *, inference_only: bool = False) -> int:
    """Parameters of the model; ``inference_only`` leaves out the reference encoder (training only)."""
    skip = {id(p) for p in model.reference.parameters()} if inference_only else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def prunable_ignored_layers(model: TTSStudent) -> list[nn.Module]:
    """Layers a channel pruner must keep whole: whatever touches the residual width or the style
    tokens (embedding, style tokens and projections, frame position, mel output), the reference
    encoder (training only; not on the traced path) and the duration predictor's 1-channel output."""
    return [
        model.embedding,
        model.style_tokens,
        model.style_to_encoder,
        model.style_to_decoder,
        model.style_to_tempo,
        model.position,
        model.mel_out,
        model.duration.out,
        *model.reference.modules(),
    ]
