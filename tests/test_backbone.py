"""backbone.py: loading (alias, local directory in hub layout, random init), masked mean pooling over
valid frames, the unpadded Whisper path, chunked whole-clip features and save/reload.

The small models built here have random weights (tiny configs); the real pre-trained Whisper tiny.en
encoder from ../shared is used where a test says so."""
import numpy as np
import pytest
import soundfile as sf
import torch
import transformers

import backbone
import data

RNG = np.random.default_rng(0)


def noise(seconds, rate=16_000):
    return (0.1 * RNG.standard_normal(int(seconds * rate))).astype(np.float32)


def pooled(encoder, waves):
    encoder.eval()
    with torch.no_grad():
        return encoder(encoder.preprocess(waves))


def tiny_whisper_config():
    return transformers.WhisperConfig(
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80, vocab_size=51_865, max_source_positions=1500)


def test_tiny_is_random_seeded_and_labelled_random():
    a, b = backbone.load_encoder("tiny"), backbone.load_encoder("tiny")
    assert a.random_init and a.name == "tiny" and a.hidden_size == 32
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_pooling_uses_valid_frames_only_with_attention_mask():
    encoder = backbone.load_encoder("tiny")
    assert encoder.model_takes_mask  # layer-norm wav2vec2 variant: trained with a mask
    short, long = noise(0.5), noise(1.3)
    together = pooled(encoder, [long, short])
    alone = pooled(encoder, [short])
    torch.testing.assert_close(together[1], alone[0], atol=1e-5, rtol=1e-5)
    # Independent reference: the model's own output on the clip alone, averaged over all frames.
    inputs = encoder.extractor(short, sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        reference = encoder.model(inputs["input_values"]).last_hidden_state.mean(1)
    torch.testing.assert_close(alone, reference, atol=1e-5, rtol=1e-5)


def test_model_without_mask_is_fed_zero_padding_but_pools_valid_frames(tmp_path):
    """wav2vec2-base style (group norm, extractor without attention mask)."""
    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_kernel=(10, 8), conv_stride=(5, 64), num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=2, feat_extract_norm="group", vocab_size=8)
    torch.manual_seed(0)
    transformers.Wav2Vec2Model(config).save_pretrained(tmp_path)
    transformers.Wav2Vec2FeatureExtractor(return_attention_mask=False, do_normalize=True).save_pretrained(tmp_path)
    encoder = backbone.load_encoder(str(tmp_path))
    assert not encoder.model_takes_mask and not encoder.random_init
    short, long = noise(0.5), noise(1.0)
    inputs = encoder.preprocess([long, short])
    with torch.no_grad():
        hidden = encoder.model(inputs["input_values"]).last_hidden_state  # what the model sees: no mask
        got = encoder(inputs)
    n_valid = int(encoder.model._get_feat_extract_output_lengths(torch.tensor(len(short))))
    assert n_valid < hidden.shape[1]
    torch.testing.assert_close(got[1], hidden[1, :n_valid].mean(0))
    torch.testing.assert_close(got[0], hidden[0].mean(0))


def test_unsupported_and_missing_backbones_fail_clearly(tmp_path):
    transformers.ASTModel(transformers.ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=64)).save_pretrained(tmp_path / "ast")
    transformers.ASTFeatureExtractor().save_pretrained(tmp_path / "ast")
    with pytest.raises(ValueError, match="not supported"):
        backbone.load_encoder(str(tmp_path / "ast"))
    with pytest.raises(OSError, match=r"(?s)cannot load backbone 'no/such-model'.*Give an alias"):
        backbone.load_encoder("no/such-model")


def test_checkpoint_missing_encoder_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    encoder = backbone.load_encoder("tiny")
    encoder.save(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights[next(k for k in weights if "encoder.layers.0" in k)]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="encoder weights missing"):
        backbone.load_encoder(str(tmp_path))


def test_save_then_reload_with_transformers_alone(tmp_path):
    encoder = backbone.load_encoder("tiny")
    waves = [noise(0.7), noise(0.4)]
    expected = pooled(encoder, waves)
    encoder.save(tmp_path)
    model = transformers.AutoModel.from_pretrained(tmp_path)
    extractor = transformers.AutoFeatureExtractor.from_pretrained(tmp_path)
    inputs = extractor(waves[1], sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        plain = model(inputs["input_values"]).last_hidden_state.mean(1)
    torch.testing.assert_close(plain[0], expected[1], atol=1e-5, rtol=1e-5)
    reloaded = backbone.load_encoder(str(tmp_path))
    torch.testing.assert_close(pooled(reloaded, waves), expected)


@pytest.mark.parametrize("layout", ["conditional-generation", "audio-classification"])
def test_whisper_loads_from_both_hub_layouts(tmp_path, layout):
    """openai/whisper-* checkpoints are WhisperForConditionalGeneration; ours and ../shared's are
    WhisperForAudioClassification. A local directory exercises the same from_pretrained path as a hub id."""
    torch.manual_seed(123)  # not load_encoder's random-init seed, so the two differ
    model_class = (transformers.WhisperForConditionalGeneration if layout == "conditional-generation"
                   else transformers.WhisperForAudioClassification)
    model = model_class(tiny_whisper_config())
    model.save_pretrained(tmp_path)
    transformers.WhisperFeatureExtractor().save_pretrained(tmp_path)
    source_encoder = model.model.encoder if layout == "conditional-generation" else model.encoder
    encoder = backbone.load_encoder(str(tmp_path))
    assert encoder.whisper and encoder.hidden_size == 32 and encoder.max_seconds == 30
    for name, tensor in source_encoder.state_dict().items():
        torch.testing.assert_close(encoder.model.encoder.state_dict()[name], tensor)
    random_encoder = backbone.load_encoder(str(tmp_path), random_init=True)
    assert random_encoder.random_init
    assert not torch.equal(random_encoder.model.encoder.conv1.weight, encoder.model.encoder.conv1.weight)


def test_whisper_unpadded_path_equals_transformers_on_a_full_30s_clip(whisper_dir):
    """On exactly 30 s nothing is padded, so our forward must equal transformers' WhisperEncoder."""
    encoder = backbone.load_encoder(str(whisper_dir))
    assert not encoder.random_init and encoder.hidden_size == 384
    wave = noise(30)
    encoder.eval()
    inputs = encoder.preprocess([wave])
    assert inputs["input_features"].shape[-1] == 3000
    with torch.no_grad():
        ours = encoder(inputs)
        theirs = encoder.model.encoder(inputs["input_features"]).last_hidden_state.mean(1)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_whisper_features_do_not_depend_on_batch_mates_or_on_30s_padding(whisper_dir):
    encoder = backbone.load_encoder(str(whisper_dir))
    for samples in (9600, 9600 + 77, 10290):  # a whole number of 160-sample hops, and not
        short = noise(samples / 16_000)
        alone = pooled(encoder, [short])[0]
        together = pooled(encoder, [noise(2.0), short])[1]
        # Before, a clip alone had floor(samples / 160) frames and the STFT's reflection past its end,
        # in a batch ceil(samples / 160) frames and zeros: 0.4 apart in a probe's logits on FSDD.
        torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
        # transformers' own 30-s padded input, given its mask: the same frames, the same features
        padded = encoder.extractor(short, sampling_rate=16_000, return_attention_mask=True, return_tensors="pt")
        assert padded["input_features"].shape[-1] == 3000
        with torch.no_grad():
            thirty = encoder(dict(padded))[0]
        torch.testing.assert_close(thirty, alone, atol=1e-5, rtol=1e-5)


def test_extract_features_averages_chunks_and_keeps_clip_order(tmp_path):
    encoder = backbone.load_encoder("tiny")
    waves = [noise(2.5), noise(0.5), noise(1.0)]
    clips = []
    for i, wave in enumerate(waves):
        sf.write(tmp_path / f"{i}.wav", wave, 16_000, subtype="FLOAT")
        clips.append(data.Clip(str(tmp_path / f"{i}.wav"), "ab"[i % 2], "test"))
    features, labels = backbone.extract_features(encoder, clips, ["a", "b"], max_seconds=1.0,
                                                 device=torch.device("cpu"), batch_size=2)
    assert labels.tolist() == [0, 1, 0]
    for i, wave in enumerate(waves):
        chunks = data.split_into_chunks(wave, 16_000)
        expected = torch.stack([pooled(encoder, [c])[0] for c in chunks]).mean(0)
        torch.testing.assert_close(features[i], expected, atol=1e-5, rtol=1e-5)
    assert len(data.split_into_chunks(waves[0], 16_000)) == 3


def clips_on_disk(tmp_path, seconds):
    clips = []
    for i, length in enumerate(seconds):
        sf.write(tmp_path / f"{i}.wav", noise(length), 16_000, subtype="FLOAT")
        clips.append(data.Clip(str(tmp_path / f"{i}.wav"), "ab"[i % 2], "valid"))
    return clips


@pytest.mark.parametrize("num_workers", [0, 2])
def test_features_from_batches_in_memory_equal_decoding_again(tmp_path, monkeypatch, num_workers):
    # The valid metric's inputs are decoded once and kept: the features must be bit-identical to
    # decoding the clips again, and reusing the batches must not touch the files.
    encoder = backbone.load_encoder("tiny")
    clips = clips_on_disk(tmp_path, [2.5, 0.5, 1.0, 0.7, 1.6])
    kwargs = dict(max_seconds=1.0, device=torch.device("cpu"), batch_size=2)
    fresh = backbone.extract_features(encoder, clips, ["a", "b"], **kwargs)
    kept = backbone.batches_in_memory(encoder, clips, ["a", "b"], 1.0, limit_mb=64, batch_size=2,
                                      num_workers=num_workers)
    assert len(kept) == 3 and 0 < backbone.size_mb(kept) < 1
    monkeypatch.setattr(data.EvalClips, "__getitem__", lambda *a: pytest.fail("decoded again"))
    monkeypatch.setattr(data, "length_sorted_order", lambda *a: pytest.fail("read the files again"))
    for _ in range(2):  # used every epoch: the batches are not consumed by the first pass
        again = backbone.extract_features(encoder, clips, ["a", "b"], batches=kept, **kwargs)
        assert torch.equal(again[0], fresh[0]) and torch.equal(again[1], fresh[1])
        assert not again[0].requires_grad and not fresh[0].requires_grad  # encoded without a graph


def test_batches_in_memory_gives_up_over_its_limit_and_says_so(tmp_path, capsys):
    encoder = backbone.load_encoder("tiny")
    # 3 clips x 16,000 samples x (float32 input + int32 attention mask) = 0.366 MiB
    clips = clips_on_disk(tmp_path, [1.0, 1.0, 1.0])
    assert backbone.batches_in_memory(encoder, clips, ["a", "b"], 1.0, limit_mb=0.3, batch_size=1) is None
    assert "--eval-cache-mb" in capsys.readouterr().out
    kept = backbone.batches_in_memory(encoder, clips, ["a", "b"], 1.0, limit_mb=0.4, batch_size=1)
    assert kept is not None and backbone.size_mb(kept) == pytest.approx(3 * 16_000 * (4 + 4) / 2**20)
