"""Pre-trained audio encoders f_e behind one interface: load, preprocess, mean-pool, save.
(Run bookkeeping, the feature cache and the device choice are in runs.py.)

Every file that loads or runs an encoder goes through here, so that all of them load, preprocess,
pool and save it the same way: the three stages (pairtune.py, finetune.py, probe.py), the scripts
around them (eval.py, export.py, predict.py, bench.py) and the modules runs.py (the feature cache)
and trained.py (a finished run's classifier). Two families are supported:

- raw-waveform encoders (wav2vec2, HuBERT, WavLM, data2vec-audio, ...) through AutoModel and
  AutoFeatureExtractor; each model's own feature-extractor settings decide normalisation and
  whether the model is given an attention mask (wav2vec2-base is not: it was trained without one);
- Whisper encoders (openai/whisper-* or a local copy), log-mel input, encoder only, without
  padding every clip to 30 s (masked_whisper.whisper_frames, which Whisper exports ship too).

The pooled representation r is the mean of the last hidden layer over valid (non-padding) frames.
"""
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import transformers
from tqdm.auto import tqdm

import data
import outdir
from masked_whisper import whisper_frames  # the one definition, which Whisper exports ship too

ALIASES = {
    "wav2vec2": "facebook/wav2vec2-base",
    "hubert": "facebook/hubert-base-ls960",
    "wavlm": "microsoft/wavlm-base",
}
TINY = "tiny"  # a randomly initialised 2-layer wav2vec2 (hidden size 32) for smoke runs and tests


def display_name(backbone: str) -> str:
    """'wav2vec2' for the alias, the folder name for a local path, the hub id otherwise."""
    if backbone in ALIASES or backbone == TINY:
        return backbone
    if os.path.isdir(backbone):
        return Path(backbone).resolve().name
    return backbone


def tiny_wav2vec2():
    """A 2-layer, 32-wide wav2vec2 with random weights (seeded, so every run builds the same one)."""
    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32, 32), conv_kernel=(10, 8, 8), conv_stride=(5, 8, 8),  # 320x, as in base
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer", do_stable_layer_norm=True, mask_time_prob=0.0, vocab_size=8)
    extractor = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True,
        return_attention_mask=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.Wav2Vec2Model(config)
    return model, extractor


def load_encoder(backbone: str, random_init: bool = False, seed: int = 0) -> "AudioEncoder":
    """Alias, hub id or local directory -> AudioEncoder. Hub ids and directories share one code path
    (transformers' from_pretrained takes either).

    random_init=True builds the same architecture with freshly initialised weights (seeded), the
    control that shows what pre-training contributes.
    """
    source = ALIASES.get(backbone, backbone)
    if source == TINY:
        model, extractor = tiny_wav2vec2()
        return AudioEncoder(model, extractor, name=TINY, random_init=True)
    try:
        config = transformers.AutoConfig.from_pretrained(source)
        extractor = transformers.AutoFeatureExtractor.from_pretrained(source)
    except Exception as error:
        if Path(source).is_dir():  # a damaged or foreign folder (a run's encoder/): one line naming it
            raise outdir.Refused(f"the model folder {source} cannot be loaded ({type(error).__name__}: "
                                 f"{one_line(error)}); if this is a run's encoder/, train the run again "
                                 "(--overwrite)") from None
        if not isinstance(error, OSError):
            raise
        raise OSError(
            f"cannot load backbone '{backbone}' ({source}): {error}\nGive an alias "
            f"({', '.join([*ALIASES, TINY])}), a local directory with config.json, or a hub id "
            "(needs network access, or a filled Hugging Face cache).") from None
    whisper = config.model_type == "whisper"
    model_class = transformers.WhisperForAudioClassification if whisper else transformers.AutoModel
    if random_init:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = model_class.from_config(config) if not whisper else model_class(config)
    else:
        try:
            model, info = model_class.from_pretrained(source, output_loading_info=True)
        except Exception as error:  # a truncated or foreign weights file in a folder: say which, not a traceback
            if not Path(source).is_dir():
                raise
            raise outdir.Refused(f"the weights in {source} cannot be loaded ({type(error).__name__}: "
                                 f"{one_line(error)}); if this is a run's encoder/, train the run again "
                                 "(--overwrite)") from None
        # A checkpoint that does not match the architecture loads with random weights and only a
        # log line; refuse instead, unless the missing weights are heads we never use.
        missing = [k for k in info["missing_keys"]
                   if not k.startswith(("projector.", "classifier.", "masked_spec_embed"))]
        if missing:
            raise ValueError(f"backbone '{backbone}': {len(missing)} encoder weights missing from the "
                             f"checkpoint (e.g. {missing[0]}); it would run with random weights.")
    if whisper:
        return AudioEncoder(model, extractor, name=display_name(backbone), random_init=random_init)
    if not hasattr(model, "_get_feat_extract_output_lengths") or extractor.feature_size != 1:
        raise ValueError(
            f"backbone '{backbone}' (model_type {config.model_type}) is neither a raw-waveform encoder "
            "(wav2vec2, HuBERT, WavLM, data2vec-audio, ...) nor Whisper; it is not supported.")
    return AudioEncoder(model, extractor, name=display_name(backbone), random_init=random_init)


def one_line(error: Exception) -> str:
    """An error's first line, short; torch's advice to turn weights_only off (a pickle that could
    run code) is never passed on."""
    text = str(error)
    if "weights_only" in text:
        return "it holds more than tensors (a pickle), and is not loaded"
    return (text.strip().splitlines() or [""])[0][:160]


# Bumped when the audio -> model input path (Preprocessor) changes what features come out (2: Whisper
# clips see zeros past their end and ceil(samples / hop) frames, alone or batched): runs.py's feature
# cache then serves no older features, and trained.py warns about a classifier trained on older ones.
FRONTEND_VERSION = 2


class Preprocessor:
    """Waveforms -> padded model inputs, through the model's own feature extractor.

    Kept apart from the model so DataLoader workers can run it without a copy of the weights.
    Always asks for the attention mask: it marks valid samples/frames for pooling, whether or not
    the model itself is given it. A wave shorter than `min_samples` (the encoder's receptive field)
    is zero-padded to it, as part of the clip: it then gives one frame instead of none, which would
    crash a batch of its own and pool to a zero vector in a batch with longer clips.
    """

    def __init__(self, extractor, whisper: bool, min_samples: int = 1):
        self.extractor, self.whisper, self.min_samples = extractor, whisper, min_samples

    def __call__(self, waves: list[np.ndarray]) -> dict:
        waves = [np.pad(w, (0, max(0, self.min_samples - len(w)))) for w in waves]
        if self.whisper:
            return self.whisper_inputs(waves)
        return dict(self.extractor(waves, sampling_rate=self.extractor.sampling_rate, padding="longest",
                                   return_attention_mask=True, return_tensors="pt"))

    def whisper_inputs(self, waves: list[np.ndarray]) -> dict:
        """Log-mel frames padded to the batch's longest clip ("longest" instead of Whisper's default
        30 s: 10-20x less compute on short clips), each clip as a zero-padded batch sees it: zeros
        after its end (not the STFT's reflection, which only the longest clip would get) and
        ceil(samples / hop) valid frames, the last one partly padding. A clip's features then do not
        depend on its batch mates, and equal what the masked model computes on transformers' own
        30-s padded input (the export's check)."""
        hop, most = self.extractor.hop_length, self.extractor.n_samples
        tail = self.extractor.n_fft  # covers every STFT window that reaches past the clip's end
        lengths = torch.tensor([len(w) for w in waves])
        waves = [np.pad(w, (0, max(0, min(tail, most - len(w))))) for w in waves]
        inputs = dict(self.extractor(waves, sampling_rate=self.extractor.sampling_rate, padding="longest",
                                     return_attention_mask=True, return_tensors="pt"))
        frames = inputs["input_features"].shape[-1]
        valid = torch.clamp((lengths + hop - 1) // hop, max=frames)
        inputs["attention_mask"] = (torch.arange(frames)[None] < valid[:, None]).to(inputs["attention_mask"].dtype)
        return inputs


class AudioEncoder(nn.Module):
    """f_e: model inputs -> r, the mean over valid frames of the last hidden layer [B, hidden_size]."""

    def __init__(self, model, extractor, name: str, random_init: bool):
        super().__init__()
        self.whisper = isinstance(model, transformers.WhisperForAudioClassification)
        self.model = model  # for Whisper, a WhisperForAudioClassification whose .encoder we run
        self.extractor = extractor
        self.name, self.random_init = name, random_init
        self.sample_rate = extractor.sampling_rate
        self.hidden_size = model.config.hidden_size if not self.whisper else model.config.d_model
        self.preprocess = Preprocessor(extractor, self.whisper, self.min_samples)
        # Raw-waveform models whose extractor does not return a mask (wav2vec2-base, HuBERT-base)
        # were trained on zero-padded batches without one; giving them a mask changes their outputs.
        self.model_takes_mask = self.whisper or bool(getattr(extractor, "return_attention_mask", False))

    @property
    def min_samples(self) -> int:
        """Fewest samples that give one frame: the conv stack's receptive field (400 at 16 kHz for
        wav2vec2, HuBERT and WavLM). Whisper's log-mel front end gives a frame for any length."""
        if self.whisper:
            return 1
        frames = self.model._get_feat_extract_output_lengths(torch.arange(1, 100_001))
        return int(torch.nonzero(frames >= 1)[0]) + 1

    @property
    def max_seconds(self) -> float | None:
        """Longest input the encoder accepts (Whisper: 30 s of positions), None if unbounded."""
        if self.whisper:
            return self.model.config.max_source_positions * 2 * self.extractor.hop_length / self.sample_rate
        return None

    def chunk_seconds(self, seconds: float) -> float:
        """The evaluation chunk length for a requested one: capped at what the encoder accepts."""
        return seconds if self.max_seconds is None else min(seconds, self.max_seconds)

    def forward(self, inputs: dict) -> torch.Tensor:
        hidden, frame_mask = (self._whisper_frames if self.whisper else self._waveform_frames)(inputs)
        frame_mask = frame_mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
        return (hidden * frame_mask).sum(1) / frame_mask.sum(1).clamp(min=1)  # [B, d]

    def _waveform_frames(self, inputs):
        sample_mask = inputs["attention_mask"]  # [B, samples]
        output = self.model(inputs["input_values"],
                            attention_mask=sample_mask if self.model_takes_mask else None)
        hidden = output.last_hidden_state  # [B, T, d]
        lengths = self.model._get_feat_extract_output_lengths(sample_mask.sum(-1))
        frame_mask = torch.arange(hidden.shape[1], device=hidden.device)[None] < lengths[:, None]
        return hidden, frame_mask

    def _whisper_frames(self, inputs):
        return whisper_frames(self.model.encoder, inputs["input_features"], inputs["attention_mask"], self.training)

    def checkpoint_activations(self):
        """--grad-checkpointing: transformers' own, layer by layer (our Whisper loop calls the same
        layers, so it is covered too); non-reentrant, so DDP's gradient hooks see the recomputation."""
        enable = getattr(self.model, "activation_checkpointing_enable", None)  # transformers >= 5.x's name
        if enable is not None:
            enable({"use_reentrant": False})
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def save(self, out_dir):
        """save_pretrained of the encoder and its feature extractor: reloadable with transformers alone
        (AutoModel, or WhisperForAudioClassification for Whisper) and with load_encoder(out_dir)."""
        self.model.save_pretrained(out_dir)
        self.extractor.save_pretrained(out_dir)


def to_device(inputs: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}


PRECISIONS = ("auto", "bf16", "fp32")


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on a CUDA device that supports it (no loss scaling needed, unlike fp16), else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast for --precision bf16 (matmuls and convolutions in bf16, reductions in float32);
    nothing for fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=resolve_precision(precision, device) == "bf16")


def eval_batches(encoder: AudioEncoder, clips, classes, max_seconds: float, batch_size: int = 16,
                 num_workers: int = 0, multilabel: bool = False):
    """Batches (inputs, owner, labels, indices) of whole clips for evaluation, in order of length to
    keep padding small; a clip longer than max_seconds is cut into near-equal chunks (see EvalClips).
    The loader has its own generator: a DataLoader draws a seed for its iterator, and evaluation
    between epochs must not move the global random state that training's dropout draws from."""
    dataset = data.EvalClips(clips, classes, encoder.sample_rate, max_seconds, multilabel)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, generator=torch.Generator(),
        sampler=data.length_sorted_order(clips), collate_fn=data.CollateEval(encoder.preprocess))


def batches_in_memory(encoder: AudioEncoder, clips, classes, max_seconds: float, limit_mb: float,
                      batch_size: int = 16, num_workers: int = 0, desc: str = "decoding", multilabel: bool = False):
    """eval_batches decoded and preprocessed once and kept, for clips encoded again every epoch (the
    valid metric): the same inputs each time, without the decoding. None, with a note, if they need
    more than limit_mb of memory (long clips, big valid sets): the caller then decodes every time."""
    kept, size = [], 0
    for inputs, owner, labels, indices in tqdm(eval_batches(encoder, clips, classes, max_seconds, batch_size,
                                                            num_workers, multilabel),
                                               desc=desc, leave=False, disable=None):
        # clone: a batch from a worker process lives in shared memory, one file descriptor a tensor
        inputs = {k: v.clone() for k, v in inputs.items()}
        size += sum(v.nbytes for v in inputs.values())
        if size > limit_mb * 2**20:
            print(f"note: {desc}: more than {max(limit_mb, 0):g} MB to keep in memory (--eval-cache-mb), "
                  f"so these clips are decoded again every epoch")
            return None
        kept.append((inputs, owner.clone(), labels.clone(), indices.clone()))
    return kept


def size_mb(batches) -> float:
    """Memory held by the inputs of batches_in_memory's batches."""
    return sum(v.nbytes for inputs, *_ in batches for v in inputs.values()) / 2**20


def forward_passes(encoder: AudioEncoder, inputs: dict, max_samples: int | None) -> list[dict]:
    """A batch's model inputs as consecutive slices of its chunks, each of at most max_samples input
    samples (chunks x the batch's padded length; a Whisper mel frame counts hop_length samples) and
    at least one chunk; the whole batch if max_samples is None. Every chunk of a clip sits in its
    clip's batch, so a batch of long clips can be far larger than batch_size chunks; slicing the
    padded batch gives each chunk the very input it had (its features do not depend on its mates)."""
    chunks, width = inputs["attention_mask"].shape
    samples = width * (encoder.extractor.hop_length if encoder.whisper else 1)
    step = chunks if max_samples is None else max(1, max_samples // samples)
    return [{k: v[i:i + step] for k, v in inputs.items()} for i in range(0, chunks, step)]


@torch.no_grad()
def extract_features(encoder: AudioEncoder, clips, classes, max_seconds: float, device,
                     batch_size: int = 16, num_workers: int = 0, desc: str = "encoding", precision: str = "auto",
                     batches=None, max_samples_per_pass: int | None = None, multilabel: bool = False):
    """Pooled features of whole clips, deterministic: [N, d] float32 and labels [N] (class indices), or
    with multilabel multi-hot targets [N, C] (float32), in clip order.

    A clip longer than max_seconds is cut into near-equal chunks; its feature is the mean of the
    chunks' pooled features (a 30-s GTZAN clip is scored on all 30 s). `batches`: the clips' batches
    from batches_in_memory, used instead of decoding them again. `max_samples_per_pass` bounds the
    memory of one forward pass (forward_passes); the features are the same.
    """
    was_training = encoder.training
    encoder.eval()
    if batches is None:
        batches = eval_batches(encoder, clips, classes, max_seconds, batch_size, num_workers, multilabel)
    features = torch.zeros(len(clips), encoder.hidden_size)
    labels = torch.zeros(len(clips), len(classes)) if multilabel else torch.zeros(len(clips), dtype=torch.long)
    for inputs, owner, batch_labels, indices in tqdm(batches, desc=desc, leave=False, disable=None):
        pooled = []
        for part in forward_passes(encoder, inputs, max_samples_per_pass):
            with autocast(device, precision):
                pooled.append(encoder(to_device(part, device)).float().cpu())
        pooled = torch.cat(pooled)  # [chunks, d]
        summed = torch.zeros(len(indices), pooled.shape[1]).index_add_(0, owner, pooled)
        counts = torch.bincount(owner, minlength=len(indices)).unsqueeze(1)
        features[indices] = summed / counts
        labels[indices] = batch_labels
    encoder.train(was_training)
    return features, labels
