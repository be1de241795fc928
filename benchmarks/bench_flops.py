"""FLOPs per image of the paper's teacher ensemble vs its student, through distilldift's real teacher code.

Every model is built from its architecture config on PyTorch's ``meta`` device (shapes only: no weights, no
download, no memory) and run under ``torch.utils.flop_counter.FlopCounterMode``:

- student: DINOv2-B/14-reg at 434 px (``distilldift_us``'s architecture; LoRA merged adds nothing);
- teacher 1: ``ModelTeacher`` on DINOv2-B/14-reg at 434 px;
- teacher 2: ``DiffusionTeacher`` on an SDXL-Turbo-sized pipeline (UNet2DConditionModel 2.57B parameters, the
  SDXL VAE, CLIP-L/14 and OpenCLIP-bigG text encoders) at 980 px with 4 timesteps, stopped after the first
  ResNet + Transformer pair of ``up_blocks[0]``.

    python benchmarks/bench_flops.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

# Architecture of stabilityai/sdxl-turbo (= SDXL base 1.0): unet/, vae/, text_encoder/, text_encoder_2/ configs.
SDXL_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32, flip_sin_to_cos=True, freq_shift=0,
)  # fmt: skip
SDXL_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    scaling_factor=0.13025, sample_size=1024,
)  # fmt: skip
CLIP_L = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)  # fmt: skip
CLIP_BIGG = dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
    max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
)  # fmt: skip


def count(fn) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def sdxl_pipeline(tokenizer_dir: Path):
    """An SDXL-Turbo-sized pipeline on the meta device, with a toy tokenizer (token ids do not change FLOPs)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vocab = {"<|startoftext|>": 49406, "<|endoftext|>": 49407}
    for i, c in enumerate("abcdefghijklmnopqrstuvwxyz"):
        vocab[c], vocab[c + "</w>"] = 2 * i, 2 * i + 1
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab))
    (tokenizer_dir / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tokenizer_dir / "vocab.json"), str(tokenizer_dir / "merges.txt"), model_max_length=77)
    ids = dict(bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**SDXL_VAE)
        te1 = CLIPTextModel(CLIPTextConfig(**CLIP_L, **ids))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIGG, **ids))
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                                     unet=unet, scheduler=EulerDiscreteScheduler(num_train_timesteps=1000))  # fmt: skip


def main() -> None:
    from distilldift.training.teachers import DiffusionTeacher, ModelTeacher
    from distilldift.weights import create_model

    image = torch.rand(1, 3, 480, 640)
    with torch.device("meta"):
        dino = create_model("dinov2_b14_reg")
    grid = dino.geometry((434, 434), 434).grid_size  # the student's 31 x 31 grid
    student = count(lambda: dino(torch.empty(1, 3, 434, 434, device="meta")))
    t_dino = count(lambda: ModelTeacher(dino, size=434)(image, grid))
    with tempfile.TemporaryDirectory() as tmp:
        pipe = sdxl_pipeline(Path(tmp))
        params = sum(p.numel() for p in pipe.unet.parameters())
        teacher = DiffusionTeacher(pipe, size=980)
        t_sdxl = count(lambda: teacher(image, grid, ["cat"]))
        t_sdxl_1 = count(lambda: DiffusionTeacher(pipe, size=980, timesteps=(51,))(image, grid, ["cat"]))
    print(f"SDXL UNet parameters: {params / 1e9:.3f} B (SDXL-Turbo: 2.567 B)")
    print(f"student  DINOv2-B/14-reg @434           : {student / 1e12:7.3f} TFLOP / image")
    print(f"teacher  DINOv2-B/14-reg @434           : {t_dino / 1e12:7.3f} TFLOP / image")
    print(f"teacher  SDXL-Turbo @980, 4 timesteps  : {t_sdxl / 1e12:7.3f} TFLOP / image "
          f"(1 timestep: {t_sdxl_1 / 1e12:.3f}; VAE + text encoders are in both)")  # fmt: skip
    total = t_dino + t_sdxl
    print(f"ensemble / student = {total / student:.1f}x  (ensemble {total / 1e12:.2f} TFLOP)")


if __name__ == "__main__":
    main()
