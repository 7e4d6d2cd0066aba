"""Whisper's encoder pooled over a clip's own frames: the one definition, here and in every Whisper export.

transformers' WhisperForAudioClassification pads every input to 30 s and averages its encoder's
1500 frames, padding included. AudioConFit averages over the clip's own frames, and its classifiers
are trained on those features: the same weights in transformers' class give other predictions
(chance level on FSDD digits). This file holds the masked pooling (`whisper_frames`) and the
classifier built on it (`MaskedWhisperClassifier`, with its own config type MODEL_TYPE).

backbone.py imports it; export.py copies this very file into a Whisper export and names its classes
in the export's config.json (`auto_map`), so that transformers runs them:

    classify = transformers.pipeline("audio-classification", model=EXPORT, trust_remote_code=True)

and, without trust_remote_code=True, refuses the folder (it does not know MODEL_TYPE) instead of
loading it as a WhisperForAudioClassification that predicts something else. So it imports torch
and transformers only: a Hub user has neither this repository nor its other modules.
"""
import torch
import torch.nn as nn
import transformers

MODEL_TYPE = "audioconfit-whisper"


def whisper_frames(encoder, features, mel_mask, training: bool = False):
    """Whisper's encoder layers on unpadded (or padded and masked) log-mel input -> (last hidden
    layer [B, T, d], valid frames [B, T]).

    transformers' WhisperEncoder.forward insists on 3000 mel frames (30 s). Its positional table is
    fixed (sinusoidal), so we run the same layers on unpadded input with the first T positions, and
    mask padded frames out of attention so a clip's features do not depend on what it was batched
    with (or on how far it was padded: 30 s gives what the batch's longest length gives)."""
    # Zero what lies past each clip before each conv, as a clip alone would be zero-padded there.
    valid_mel = mel_mask[:, None, :].to(encoder.conv1.weight.dtype)  # [B, 1, F]
    x = nn.functional.gelu(encoder.conv1(features.to(valid_mel.dtype) * valid_mel))
    x = nn.functional.gelu(encoder.conv2(x * valid_mel)).permute(0, 2, 1)  # [B, T, d], T = ceil(F/2)
    frames = x.shape[1]
    if frames > encoder.embed_positions.num_embeddings:
        seconds = encoder.embed_positions.num_embeddings * 2 * 160 / 16_000
        raise ValueError(f"Whisper takes at most {seconds:.0f} s per chunk; lower --max-seconds.")
    x = x + encoder.embed_positions.weight[:frames]
    x = nn.functional.dropout(x, p=encoder.dropout, training=training)
    lengths = (mel_mask.sum(-1) - 1) // 2 + 1  # conv2 has stride 2
    frame_mask = torch.arange(frames, device=x.device)[None] < lengths[:, None]  # [B, T]
    additive = torch.zeros(frame_mask.shape, dtype=x.dtype, device=x.device)
    additive = additive.masked_fill(~frame_mask, torch.finfo(x.dtype).min)[:, None, None, :]
    for layer in encoder.layers:
        if training and encoder.layerdrop > 0 and torch.rand([]) < encoder.layerdrop:
            continue  # LayerDrop, as in transformers' encoder
        x = layer(x, additive)
    return encoder.layer_norm(x), frame_mask


class MaskedWhisperConfig(transformers.WhisperConfig):
    """WhisperConfig under its own model_type: transformers alone does not know it, so it cannot take
    an export for a plain WhisperForAudioClassification (which pools over the padding)."""

    model_type = MODEL_TYPE


class MaskedWhisperClassifier(transformers.WhisperForAudioClassification):
    """transformers' Whisper classifier pooled as AudioConFit pools: over the clip's own frames.

    The same weights and files as WhisperForAudioClassification; forward reads the feature
    extractor's attention mask (a Whisper export's extractor returns it) and averages the last
    hidden layer over valid frames only, which is what the run's probe or head was trained on. The
    projector and classifier are affine, so they commute with the mean. An export loads with

        transformers.pipeline("audio-classification", model=EXPORT, trust_remote_code=True)
        transformers.AutoModelForAudioClassification.from_pretrained(EXPORT, trust_remote_code=True)

    or, in AudioConFit, with MaskedWhisperClassifier.from_pretrained(EXPORT) (no code from the folder).
    """

    config_class = MaskedWhisperConfig

    def forward(self, input_features=None, attention_mask=None, labels=None, **kwargs):
        frames = input_features.shape[-1]
        expected = self.config.max_source_positions * 2
        if frames != expected:  # as the parent class: what the feature extractor gives by default (30 s)
            raise ValueError(f"MaskedWhisperClassifier takes {expected} mel frames (the feature extractor's 30-s "
                             f"padding), got {frames}: let the extractor pad (padding='max_length')")
        if attention_mask is None:  # every frame would count, padding included: the parent class's wrong answer
            raise ValueError("MaskedWhisperClassifier needs the feature extractor's attention_mask (which frames are "
                             "the clip's): call the extractor with return_attention_mask=True")
        if attention_mask.shape[-1] != frames:
            # WhisperFeatureExtractor returns its mask per sample, not per frame, when return_attention_mask
            # comes from its config rather than the call (as in transformers' pipeline): a clip of n
            # samples has ceil(n / hop) frames, as AudioConFit's preprocessing gives it.
            hop = attention_mask.shape[-1] // frames
            valid = (attention_mask.sum(-1) + hop - 1) // hop
            attention_mask = (torch.arange(frames, device=valid.device)[None] < valid[:, None]).long()
        hidden, frame_mask = whisper_frames(self.encoder, input_features, attention_mask, self.training)
        weights = frame_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        logits = self.classifier(self.projector(pooled))  # the projector is affine: it commutes with the mean
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels.to(logits.device))
        return transformers.modeling_outputs.SequenceClassifierOutput(loss=loss, logits=logits)
