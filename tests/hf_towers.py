"""Small random Hugging Face vision models built offline, shared by the HF adapter tests (tests/test_hf_vision.py,
tests/test_hf_merge.py, the compile cases of tests/families.py): every tower class and the models holding one, with
weights drawn large enough that attention is far from uniform.
"""
import torch
import transformers

from repshift.patch.hf_vision import HFVisionAdapter

VISION = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, image_size=32,
              patch_size=8)
DINO = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8,
            layerscale_value=0.5)  # layer scale != 1, so ls1/ls2 matter
TEXT = dict(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=16, pad_token_id=1, bos_token_id=0, eos_token_id=2)
PATCHES = 16  # (32 / 8) ** 2
TOWERS = {"ViTModel": 1, "DeiTModel": 2, "CLIPVisionModel": 1, "SiglipVisionModel": 0, "Dinov2Model": 1,
          "Dinov2WithRegistersModel": 1 + 4}  # -> tokens before the patches (class, distillation, registers)
HOLDERS = ["ViTForImageClassification", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher",
           "CLIPModel", "CLIPVisionModelWithProjection", "CLIPForImageClassification", "SiglipModel",
           "SiglipForImageClassification", "Dinov2ForImageClassification", "Dinov2WithRegistersForImageClassification"]


def config(name: str):
    if name.startswith("Dinov2WithRegisters"):
        return transformers.Dinov2WithRegistersConfig(**DINO, num_register_tokens=4, num_labels=5)
    if name.startswith("Dinov2"):
        return transformers.Dinov2Config(**DINO, num_labels=5)
    if name.startswith("ViT"):
        return transformers.ViTConfig(**VISION, num_labels=5)
    if name.startswith("DeiT"):
        return transformers.DeiTConfig(**VISION, num_labels=5)
    if name in ("CLIPModel", "CLIPForImageClassification"):
        return transformers.CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=16, num_labels=5)
    if name.startswith("CLIP"):
        return transformers.CLIPVisionConfig(**VISION, projection_dim=16)
    if name in ("SiglipModel", "SiglipForImageClassification"):
        return transformers.SiglipConfig(text_config=TEXT, vision_config=VISION, num_labels=5)
    return transformers.SiglipVisionConfig(**VISION)


def make(name: str, attention: str = "sdpa"):
    torch.manual_seed(0)
    model = getattr(transformers, name)(config(name)).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # transformers' init (std 0.02) leaves attention almost uniform
            parameter.normal_(0.0, 0.3)
    model.set_attn_implementation(attention)
    return model


def features(model, images):
    """The model's main image output: a tower's last hidden state, a head's logits, CLIP/SigLIP's image embedding."""
    if type(model).__name__ in ("CLIPModel", "SiglipModel"):
        return model.get_image_features(pixel_values=images).pooler_output
    return model(pixel_values=images)[0]


def tower_of(model):
    return HFVisionAdapter().tower(model)
