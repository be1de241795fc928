"""The SDXL(-Turbo) teacher's real code path on a tiny random-init pipeline built from configs (no download)."""

import json

import pytest
import torch

from conftest import TINY

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from distilldift.training.cache import TeacherCache, build_teacher_cache  # noqa: E402
from distilldift.training.teachers import DiffusionTeacher, EnsembleTeacher, ModelTeacher, to_grid  # noqa: E402
from distilldift.weights import create_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    """SDXL's structure (two CLIP text encoders, text_time conditioning, cross-attention up block) at toy sizes."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tokenizer")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=24)
    cfg = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=24,
        projection_dim=32,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,
        cross_attention_dim=64,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
    )
    encoders = dict(text_encoder=CLIPTextModel(cfg), text_encoder_2=CLIPTextModelWithProjection(cfg))
    return StableDiffusionXLPipeline(
        vae=vae,
        tokenizer=tok,
        tokenizer_2=tok,
        unet=unet,
        **encoders,
        scheduler=EulerDiscreteScheduler(num_train_timesteps=1000),
    )


def test_features_on_the_student_grid(tiny_pipe):
    teacher = DiffusionTeacher(tiny_pipe, size=64)
    images = torch.rand(2, 3, 50, 70)
    f = teacher(images, grid=(5, 4), categories=["cat", "cat"])
    assert teacher.channels == 64 and f.shape == (2, 64, 4, 5)
    assert torch.allclose(f.norm(dim=1), torch.ones(2, 4, 5), atol=1e-5)
    assert torch.equal(f, teacher(images, grid=(5, 4), categories=["cat", "cat"]))  # fixed noise seed
    other = teacher(images, grid=(5, 4), categories=["dog", "dog"])  # the prompt conditions the features
    assert (f - other).abs().max() > 1e-4
    single = DiffusionTeacher(tiny_pipe, size=64, timesteps=(51,))(images, grid=(5, 4), categories=["cat", "cat"])
    assert (f - single).abs().max() > 1e-4  # four timesteps averaged, not one


def test_early_stop_takes_the_first_up_block_pair(tiny_pipe):
    """Stopping the UNet at the hook gives exactly that block's output in a full forward pass."""
    teacher = DiffusionTeacher(tiny_pipe, size=64, timesteps=(101,))
    images = torch.rand(1, 3, 64, 64)
    seen = []
    handle = tiny_pipe.unet.up_blocks[0].attentions[0].register_forward_hook(lambda m, i, o: seen.append(o[0]))
    try:
        got = teacher(images, grid=(4, 4), categories=["bird"])  # our hook stops the pass; theirs saw the same output
    finally:
        handle.remove()
    assert seen[0].shape[-2:] == (16, 16)  # 64 px -> 32 latent -> 16 at the lowest UNet level
    assert torch.allclose(got, to_grid(seen[0], (4, 4)), atol=1e-6)


def test_ensemble_through_the_cache(tiny_pipe, tmp_path):
    torch.manual_seed(0)
    vit = ModelTeacher(create_model("dinov2_b14_reg", **TINY), size=56)
    both = EnsembleTeacher([vit, DiffusionTeacher(tiny_pipe, size=64)])
    images = [torch.rand(3, 40, 40) for _ in range(3)]
    build_teacher_cache(
        both,
        ["0", "1", "2"],
        tmp_path,
        grid=(4, 4),
        image_size=(48, 48),
        categories=["a", "b", "c"],
        batch_size=2,
        shard_size=2,
        loader=lambda s: images[int(s)],
    )
    cache = TeacherCache(tmp_path)
    assert len(cache) == 3 and cache[2].shape == (64 + 64, 4, 4)
    direct = both(
        torch.nn.functional.interpolate(images[2][None], size=(48, 48), mode="bilinear", antialias=True), (4, 4), ["c"]
    )[0]
    assert torch.allclose(cache[2], direct, atol=2e-3)  # stored as float16


def test_recipe_settings_reach_the_diffusion_teacher(tiny_pipe, monkeypatch):
    from distilldift.errors import InvalidInputError
    from distilldift.training.config import apply_overrides, load_recipe
    from distilldift.training.teachers import build_teacher

    seen = {}

    def fake_from_pretrained(repo, *, device=None, dtype=None, **kwargs):  # no download: the tiny pipeline
        seen["repo"] = repo
        return DiffusionTeacher(tiny_pipe, **kwargs)

    monkeypatch.setattr(DiffusionTeacher, "from_pretrained", staticmethod(fake_from_pretrained))
    cfg = apply_overrides(
        load_recipe("coco"),
        [
            "distill.diffusion.size=64",
            "distill.diffusion.timesteps=[11, 21]",
            'distill.diffusion.prompt="a {category} photo"',
        ],
    )
    teacher = build_teacher("sdxl_turbo", cfg.distill.diffusion, torch.device("cpu"))
    assert seen["repo"] == "stabilityai/sdxl-turbo"
    assert (teacher.size, teacher.timesteps, teacher.prompt) == (64, (11, 21), "a {category} photo")
    assert build_teacher("lite", cfg.distill.diffusion, torch.device("cpu")).name.startswith("lite")
    for bad, message in [
        ('distill.teachers=["sdxl-turbo"]', "unknown teacher 'sdxl-turbo': use sdxl_turbo"),
        ("distill.diffusion.size=32", "distill.diffusion.size must be >= 64"),
        ("distill.diffusion.timesteps=[51, 1000]", r"\[0, 999\]"),
        ('distill.diffusion.prompt="a {object}"', "may only use {category}"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            apply_overrides(cfg, [bad])
